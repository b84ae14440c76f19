"""The one consumer runtime every Argus stream runs on (fraud, reports, any later one).

A job supplies its steps and its state; the runtime owns everything about the loop:

    sync        rebalance events -> release lost partitions, claim + restore new ones (paused until ready)
    collect     poll until max_records or max_wait_ms; each record checked against its partition's cursor
    process     job.process(batch): the job's named steps (store reads go through `retry`)
    write       job.write(out, also=[positions check-and-advance]): ONE store transaction, retried
    publish     job.publish(out): alerts / dead letters to their topics, flushed, retried
    commit      Kafka offsets, for lag tools only (the store's positions are the truth)

Guarantees (see pipelines/stream_positions.py for the store side):

* **Exactly-once into the store.** A partition is claimed in the store when it is assigned (its
  epoch bumped); the job restores its state and the runtime seeks to where the state stands. The
  records below the stored position are handed to the job as `replay` (state only, nothing is
  written for them). A batch is written with its new positions in the same transaction, which
  fails for a partition claimed by someone else since (`Fenced`: the partition is dropped until
  the group assigns it again) or whose batch does not start at the stored position (`OffsetGap`:
  restored again). Nothing of a refused partition is written.
* **Nothing polled is dropped.** Each partition has a cursor (the next offset this consumer
  expects). A record below it is a re-delivery and is skipped; above it, the partition is sought
  back to the cursor. While a side effect is retried, every assigned partition (also one assigned
  during the retry) is paused and the consumer keeps polling to stay in its group; anything that
  still arrives is not used, and its partition is sought back to the cursor.
* **One retry policy** (exponential backoff with full jitter, capped) for every side effect:
  store reads and writes, claims, snapshot loads, produce, commit.
* **Slow work keeps the membership.** With `slow_process=True` the job's `process` runs on a worker
  thread while this thread polls with everything paused (a 130K-token report never costs the
  group membership, whatever `max_poll_interval_ms` is).
* **Graceful stop.** `stop()` (SIGTERM / SIGINT in the CLI) finishes the batch in hand - write,
  publish, commit - then the job's `close()` (e.g. a final snapshot) runs; no batch is cut in half.

Rebalance listener callbacks run on kafka-python's IO thread, so they only record what changed;
the runtime applies it between batches (a write meanwhile is safe: the store fences it).
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy.exc import SQLAlchemyError

from pipelines.errors import ArgusError
from pipelines.kafka_io import make_consumer
from pipelines.settings import Settings
from pipelines.store import Store
from pipelines.stream_positions import (Advance, Claim, Fenced, OffsetGap, PositionConflict, advance,
                                        bump_group_generation, claim, group_generation)

log = logging.getLogger("argus.stream")

#: What a side effect may raise and still be worth retrying (anything else is a bug: it propagates).
TRANSIENT = (ArgusError, KafkaError, OSError, SQLAlchemyError, TimeoutError)


@dataclass
class RetryPolicy:
    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0

    def delays(self):
        """Full-jitter exponential backoff: uniform(0, min(max, initial * multiplier**n))."""
        ceiling = self.initial_s
        while True:
            yield random.uniform(self.initial_s / 2, ceiling)
            ceiling = min(self.max_s, ceiling * self.multiplier)


@dataclass
class PartitionBatch:
    """One partition's records in a batch: `replay` (already in the store: rebuild state only) and `live`."""

    tp: TopicPartition
    replay: list[Any] = field(default_factory=list)
    live: list[Any] = field(default_factory=list)


@dataclass
class Batch:
    parts: dict[TopicPartition, PartitionBatch]
    moves: dict[TopicPartition, Advance]

    @property
    def records(self) -> list[Any]:
        return [r for pb in self.parts.values() for r in pb.replay + pb.live]

    def __len__(self) -> int:
        return sum(len(pb.replay) + len(pb.live) for pb in self.parts.values())


class StreamJob(Protocol):
    """What a stream supplies; everything else is the runtime's."""

    def restore(self, claims: dict[TopicPartition, Claim]) -> dict[TopicPartition, int | None]:
        """Load state for newly owned partitions; return the offset to start reading each from (None:
        the beginning). It must not be past the claim's next_offset (records before it are replayed)."""

    def release(self, tps: set[TopicPartition]) -> set[TopicPartition] | None:
        """Forget the state of partitions this consumer no longer owns; return other partitions whose
        state went with them (they are claimed and restored again)."""

    def process(self, batch: Batch) -> Any:
        """The job's steps over one batch; returns what to write and publish."""

    def write(self, out: Any, also: list[Callable]) -> None:
        """ONE store transaction with the batch's rows and `also` (positions, snapshots)."""

    def drop(self, out: Any, tps: set[TopicPartition]) -> Any:
        """`out` without anything of these partitions (they may not be written)."""

    def publish(self, out: Any) -> None:
        """Send what goes to topics and flush; raise if anything was not delivered."""

    def close(self) -> None: ...


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runtime: "StreamRuntime"):
        self.runtime = runtime

    def on_partitions_revoked(self, revoked):
        self.runtime.rebalances += 1

    def on_partitions_assigned(self, assigned):
        self.runtime.assignments += 1
        self.runtime._assigned_event.set()


@dataclass
class RuntimeCounts:
    consumed: int = 0
    batches: int = 0
    retries: int = 0
    rebalances: int = 0
    fenced: int = 0
    gaps: int = 0
    sought_back: int = 0
    stale_skipped: int = 0
    rejoins: int = 0


class StreamRuntime:
    """Runs one `StreamJob` as one consumer of `group` over `topics`."""

    def __init__(self, settings: Settings, store: Store, job: StreamJob, topics: list[str], group: str, *,
                 name: str = "stream-0", max_records: int = 1024, max_wait_ms: int = 20,
                 retry: RetryPolicy | None = None, metrics: Any = None, slow_process: bool = False,
                 consumer_overrides: dict[str, Any] | None = None, eager: bool = True):
        self.settings, self.store, self.job = settings, store, job
        self.topics, self.group, self.name = topics, group, name
        self.max_records, self.max_wait_ms = max(1, max_records), max_wait_ms
        self.retry_policy = retry or RetryPolicy()
        self.metrics = metrics
        self.slow_process = slow_process
        # end a batch as soon as nothing is left to read (no lag), before max_wait_ms (collect)
        self.eager = eager
        self.stop_event = threading.Event()
        self.counts = RuntimeCounts()
        self.rebalances = 0  # revocations seen (the first join and the close count too)
        self.assignments = 0  # assignments received: 1 for a consumer that never lost its membership
        self._assigned_event = threading.Event()
        self._ready: dict[TopicPartition, int] = {}  # owned + restored partition -> epoch
        self._cursor: dict[TopicPartition, int] = {}  # next offset this consumer expects
        self._stored: dict[TopicPartition, int] = {}  # the store's next offset at claim (replay below it)
        # lost to another consumer: wait for a new assignment, or (still ours by the group after
        # fence_wait_s, when any zombie has noticed its expulsion) claim it again
        self._fenced: dict[TopicPartition, float] = {}
        self.fence_wait_s = 2 * settings.kafka.session_timeout_ms / 1000
        self._seek_back: set[TopicPartition] = set()
        self._gap_seen: dict[TopicPartition, int] = {}
        self._worker_active = threading.local()
        # a group rebalance that has not completed after this long is stalled (a coordinator waiting
        # for a member that died mid-join): leave the group and join again
        self.rejoin_after_s = max(15.0, 2 * settings.kafka.max_poll_interval_ms / 1000)
        self._unstable_since: float | None = None
        overrides = {"max_poll_records": self.max_records, "client_id": name,
                     "fetch_max_wait_ms": max(10, max_wait_ms), **(consumer_overrides or {})}
        self._consumer_overrides = overrides
        self._generation = self._read_generation()
        self._generation_checked = time.monotonic()
        self.consumer = make_consumer(settings, None, self.kafka_group, **overrides)
        self.consumer.subscribe(topics, listener=_Listener(self))

    # -- the loop ------------------------------------------------------------------------------

    def run(self, seconds: float | None = None, idle_exit_s: float | None = None, max_batches: int | None = None,
            on_batch: Callable[["StreamRuntime", Batch], None] | None = None) -> RuntimeCounts:
        """Loop over `step()` until `stop()`, `seconds`, `max_batches`, or `idle_exit_s` without a
        record once partitions are assigned and nothing is left to read."""
        # what exists before the loop (imports, the model, the job: ~650k objects for the fraud job) is
        # out of the collector's reach while it runs: a full collection walks only what the loop made
        # (one over everything took 255 ms mid-batch, the p99 of benchmarks/stream_fraud.py at 2,000
        # tx/s). Unfrozen when the loop ends, so a process that runs another job can reclaim this one.
        gc.freeze()
        start = last_data = time.monotonic()
        log.info("stream consumer started", extra={"consumer": self.name, "group": self.group})
        try:
            while not self.stop_event.is_set():
                if seconds is not None and time.monotonic() - start >= seconds:
                    break
                if max_batches is not None and self.counts.batches >= max_batches:
                    break
                batch = self.step()
                if batch is not None:
                    last_data = time.monotonic()
                    if on_batch:
                        on_batch(self, batch)
                elif idle_exit_s is not None and time.monotonic() - last_data >= idle_exit_s and self.drained():
                    break
        finally:
            try:
                self.close()
            finally:
                gc.unfreeze()
        return self.counts

    def step(self) -> Batch | None:
        """One batch through every step; None when nothing came."""
        self._timed("sync", self.sync)
        batch = self._timed("collect", self.collect)
        if batch is None:
            self.update_lag()
            return None
        t0 = time.perf_counter()
        out = self._timed("process", self._process, batch)
        out = self._timed("write", self._write, batch, out)
        self._timed("publish", lambda: self.retry("publish", lambda: self.job.publish(out)))
        self._timed("commit", self.commit, batch)
        self.counts.batches += 1
        if self.metrics is not None:
            self.metrics.batch_latency.labels(self.metrics.job).observe(time.perf_counter() - t0)
            self.metrics.batch_size.labels(self.metrics.job).observe(len(batch))
        self.update_lag()
        return batch

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        try:
            self.job.close()
        except Exception:  # noqa: BLE001 - closing must not mask the original error
            log.exception("job close failed", extra={"consumer": self.name})
        self._close_consumer(self.consumer)
        log.info("stream consumer stopped", extra={"consumer": self.name, **self.counts.__dict__})

    # -- partitions ----------------------------------------------------------------------------

    @property
    def kafka_group(self) -> str:
        """The Kafka consumer group: the stream's name, with the generation once it had to move."""
        return self.group if not self._generation else f"{self.group}~{self._generation}"

    def _read_generation(self) -> int:
        try:
            return group_generation(self.store, self.group)
        except TRANSIENT:
            return getattr(self, "_generation", 0)

    def _follow_generation(self) -> None:
        """Every few seconds: if another consumer moved the stream to a new Kafka group, follow it."""
        now = time.monotonic()
        if now - self._generation_checked < 2.0:
            return
        self._generation_checked = now
        gen = self._read_generation()
        if gen != self._generation:
            log.warning("the stream moved to a new consumer group; following", extra={
                "consumer": self.name, "group": self.group, "generation": gen})
            self._switch_consumer(gen)

    def _switch_consumer(self, generation: int) -> None:
        """A fresh consumer (new member, new connections) in the group of `generation`. Safe: where to
        read comes from the store, and partitions are claimed again when they are assigned."""
        if self._ready:
            self._release(set(self._ready))
        old = self.consumer
        self._generation = generation
        self.consumer = make_consumer(self.settings, None, self.kafka_group, **self._consumer_overrides)
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        self._unstable_since = None
        self._close_consumer(old)

    def sync(self) -> None:
        """Apply what the rebalance listener saw: release lost partitions, claim and restore new ones."""
        self._follow_generation()
        self._watch_rebalance()
        assigned = set(self.consumer.assignment())
        if self._assigned_event.is_set():
            self._assigned_event.clear()
            self._fenced.clear()  # a new assignment: what the group gives us now is ours
        now = time.monotonic()
        for tp, since in list(self._fenced.items()):
            if tp not in assigned or now - since >= self.fence_wait_s:
                del self._fenced[tp]
        gone = set(self._ready) - assigned
        if gone:
            self._release(gone)
        new = assigned - set(self._ready) - set(self._fenced)
        if set(self._fenced) & assigned:
            self.consumer.pause(*(set(self._fenced) & assigned))
        if new:
            self.consumer.pause(*new)  # nothing is read for a partition before it is restored
            self._restore(new)

    def _watch_rebalance(self) -> None:
        """Rejoin the group when a rebalance has not completed within rejoin_after_s (then, if it stalls
        again, start a fresh consumer). A safety net: the stall seen with tansu (a member leaving
        during a rebalance wedges the group) is avoided by not sending LeaveGroup. Uses kafka-python's
        coordinator state (private API, guarded)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        state = getattr(coordinator, "state", None)
        if state is None:
            return
        from kafka.structs import MemberState

        now = time.monotonic()
        if state is MemberState.STABLE:
            self._unstable_since = None
            return
        if self._unstable_since is None:
            self._unstable_since = now
            return
        if now - self._unstable_since < self.rejoin_after_s:
            return
        self._unstable_since = now
        self.counts.rejoins += 1
        if self.counts.rejoins % 2 == 1:
            log.warning("group rebalance stalled; joining again", extra={
                "consumer": self.name, "group": self.group, "rejoins": self.counts.rejoins})
            try:
                coordinator.request_rejoin()
            except Exception:  # noqa: BLE001 - the next stall starts a fresh consumer
                log.warning("could not ask for a rejoin", extra={"consumer": self.name}, exc_info=True)
            return
        # still stalled: the broker has wedged the group (tansu 0.6 can): the stream moves to a fresh
        # Kafka group, and every consumer follows (_follow_generation)
        try:
            gen = bump_group_generation(self.store, self.group, self._generation, self.name)
        except TRANSIENT:
            return
        log.warning("group rebalance still stalled; moving the stream to a fresh consumer group", extra={
            "consumer": self.name, "group": self.group, "generation": gen, "rejoins": self.counts.rejoins})
        self._switch_consumer(gen)

    def _close_consumer(self, consumer) -> None:
        """Close without LeaveGroup unless kafka.leave_group_on_close (see the setting: tansu 0.6
        wedges a group when a member leaves during a rebalance; the session expiry is safe)."""
        if not getattr(self.settings.kafka, "leave_group_on_close", False):
            coordinator = getattr(consumer, "_coordinator", None)
            if coordinator is not None:
                coordinator.maybe_leave_group = lambda *a, **k: None
        try:
            consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001 - closing must not mask the original error
            pass

    def _release(self, tps: set[TopicPartition]) -> set[TopicPartition]:
        """Forget partitions; the job may name others whose state went with them (restored again)."""
        tps = set(tps) | (self.job.release(set(tps)) or set())
        for tp in tps:
            self._ready.pop(tp, None)
            self._cursor.pop(tp, None)
            self._stored.pop(tp, None)
            self._gap_seen.pop(tp, None)
        log.info("partitions released", extra={"consumer": self.name, "partitions": sorted(map(tuple, tps))})
        return tps

    def _restore(self, tps: set[TopicPartition]) -> None:
        claims = self.retry("claim", lambda: {
            TopicPartition(*k): c for k, c in claim(self.store, self.group, [(tp.topic, tp.partition) for tp in tps],
                                                    self.name).items()})
        starts = self.retry("restore", lambda: self.job.restore(claims))
        still = set(self.consumer.assignment())
        for tp in tps:
            c = claims[tp]
            start = starts.get(tp)
            if c.next_offset is not None and start is not None and start > c.next_offset:
                raise AssertionError(f"{self.name}: job restored {tp} at {start}, past the stored position {c.next_offset}")
            if start is None:
                start = self._beginning(tp)
            self._ready[tp] = c.epoch
            self._cursor[tp] = start
            self._stored[tp] = c.next_offset if c.next_offset is not None else start
            if tp in still:
                self.consumer.seek(tp, start)
        live = [tp for tp in tps if tp in still]
        if live:
            self.consumer.resume(*live)
        log.info("partitions restored", extra={"consumer": self.name, "partitions": [
            (tp.topic, tp.partition, self._cursor[tp], self._stored[tp]) for tp in sorted(tps)]})

    def _beginning(self, tp: TopicPartition) -> int:
        return self.retry("beginning offsets", lambda: self.consumer.beginning_offsets([tp])[tp])

    # -- collect -------------------------------------------------------------------------------

    def collect(self) -> Batch | None:
        """Poll until max_records, or max_wait_ms after the first record (~100 ms when none come), or
        as soon as every owned partition is read to its end: waiting for more only pays under lag
        (bigger batches, fewer fixed costs per record); without lag it only adds latency."""
        parts: dict[TopicPartition, PartitionBatch] = {}
        n, first = 0, None
        while not self.stop_event.is_set():
            timeout = 100 if first is None else int(max(0.0, self.max_wait_ms - (time.monotonic() - first) * 1000))
            polled = self.consumer.poll(timeout_ms=timeout, max_records=self.max_records - n)
            n += self._accept(polled, parts)
            if self._assigned_event.is_set():
                break  # restore the new partitions before reading more
            if n and first is None:
                first = time.monotonic()
            if n >= self.max_records or first is None or time.monotonic() - first >= self.max_wait_ms / 1000:
                break
            if self.eager and self._caught_up():
                break
        self._apply_seek_backs()
        if not n:
            return None
        self.counts.consumed += n
        moves = {}
        for tp, pb in parts.items():
            if pb.live:
                moves[tp] = Advance(tp.topic, tp.partition, self._ready[tp], pb.live[0].offset, pb.live[-1].offset + 1)
        if self.metrics is not None:
            for tp, pb in parts.items():
                self.metrics.consumed.labels(self.metrics.job, tp.topic).inc(len(pb.replay) + len(pb.live))
        return Batch(parts, moves)

    def _caught_up(self) -> bool:
        """Every ready partition is read to the high watermark of its latest fetch (False when one is
        not known yet: then the batch waits as before)."""
        for tp in self._ready:
            hw = self.consumer.highwater(tp)
            if hw is None or self._cursor.get(tp, -1) < hw:
                return False
        return True

    def _accept(self, polled: dict, parts: dict[TopicPartition, PartitionBatch]) -> int:
        """Take the records that continue each ready partition's cursor; the rest is left to re-read."""
        n = 0
        for tp, records in polled.items():
            if tp not in self._ready:
                continue  # not restored (yet) or lost: read again from the position set at restore
            for r in records:
                expected = self._cursor[tp]
                if r.offset < expected:
                    self.counts.stale_skipped += 1  # a re-delivery of what this consumer already has
                    continue
                if r.offset > expected and tp not in self._seek_back:
                    if self._gap_seen.get(tp) != expected:
                        self._gap_seen[tp] = expected  # seek back once; a hole that stays is the log's own
                        self._seek_back.add(tp)
                        break
                    log.warning("offset gap in the log", extra={"consumer": self.name, "topic": tp.topic,
                                                               "partition": tp.partition, "expected": expected,
                                                               "got": r.offset})
                if tp in self._seek_back:
                    break
                pb = parts.get(tp) or parts.setdefault(tp, PartitionBatch(tp))
                (pb.replay if r.offset < self._stored[tp] else pb.live).append(r)
                self._cursor[tp] = r.offset + 1
                self._gap_seen.pop(tp, None)
                n += 1
        return n

    def _apply_seek_backs(self) -> None:
        if not self._seek_back:
            return
        owned = set(self.consumer.assignment())
        for tp in self._seek_back:
            if tp in self._ready and tp in owned:
                self.consumer.seek(tp, self._cursor[tp])
                self.counts.sought_back += 1
        self._seek_back.clear()

    # -- process, write, commit ------------------------------------------------------------------

    def _process(self, batch: Batch) -> Any:
        if not self.slow_process:
            return self.job.process(batch)
        return self.while_polling(lambda: self.job.process(batch))

    def while_polling(self, fn: Callable[[], Any]) -> Any:
        """Run fn on a worker thread while this thread polls with every partition paused."""
        result: dict[str, Any] = {}

        def work() -> None:
            self._worker_active.on = True
            try:
                result["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised on this thread
                result["error"] = exc

        thread = threading.Thread(target=work, name=f"{self.name}-work", daemon=True)
        self._pause_all()
        try:
            thread.start()
            while thread.is_alive():
                self._idle_poll(500)
                thread.join(timeout=0.01)
        finally:
            self._resume_ready()
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def _write(self, batch: Batch, out: Any) -> Any:
        """The job's store transaction with the position check; partitions it refuses are dropped."""
        while True:
            moves = list(batch.moves.values())
            try:
                self.retry("store write", lambda: self.job.write(out, [advance(self.group, moves)]))
                return out
            except PositionConflict as exc:
                tps = {TopicPartition(*k) for k in exc.partitions}
                released = self._release(tps)  # with any partition whose state went with them
                out = self.job.drop(out, released)
                for tp in released:
                    batch.moves.pop(tp, None)
                    batch.parts.pop(tp, None)
                if isinstance(exc, Fenced):
                    self.counts.fenced += len(tps)
                    self._fenced.update(dict.fromkeys(released, time.monotonic()))
                    if released & set(self.consumer.assignment()):
                        self.consumer.pause(*(released & set(self.consumer.assignment())))
                else:
                    assert isinstance(exc, OffsetGap)
                    self.counts.gaps += len(tps)  # still ours: the next sync restores them from the store
                log.warning("batch refused for some partitions", extra={
                    "consumer": self.name, "reason": str(exc)[:200], "partitions": sorted(map(tuple, tps))})

    def commit(self, batch: Batch) -> None:
        """Kafka offsets for lag tools (best effort: the store's positions are what counts)."""
        owned = set(self.consumer.assignment())
        offsets = {tp: OffsetAndMetadata(self._cursor[tp], "", -1) for tp in batch.parts
                   if tp in owned and tp in self._cursor}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, timeout_ms=5_000)
        except Exception as exc:  # noqa: BLE001 - a rebalance or a broker blip; the next batch commits again
            log.info("offset commit skipped", extra={"consumer": self.name, "error": str(exc)[:200]})

    # -- retry -----------------------------------------------------------------------------------

    def retry(self, what: str, fn: Callable[[], Any], on_error: Callable[[], None] | None = None) -> Any:
        """Call fn until it succeeds. Meanwhile every assigned partition is paused (backpressure: one
        batch in memory) and the consumer keeps polling to stay in its group. Position conflicts are
        not retried (the caller handles them); neither is anything not in TRANSIENT."""
        delays = self.retry_policy.delays()
        paused = False
        on_worker = getattr(self._worker_active, "on", False)
        try:
            while True:
                try:
                    return fn()
                except PositionConflict:
                    raise
                except TRANSIENT as exc:
                    if getattr(exc, "permanent", False):
                        raise  # the data was refused: the job decides (e.g. isolates the row)
                    if self.stop_event.is_set() and what in ("claim", "restore", "beginning offsets"):
                        raise
                    if on_error is not None:
                        on_error()
                    self.counts.retries += 1
                    if self.metrics is not None:
                        self.metrics.store_retries.labels(self.metrics.job).inc()
                    delay = next(delays)
                    log.warning(f"{what} failed ({type(exc).__name__}); retrying",
                                extra={"consumer": self.name, "retry_in_s": round(delay, 2), "error": str(exc)[:200]})
                    if on_worker:  # the main thread polls meanwhile (while_polling)
                        time.sleep(delay)
                        continue
                    if not paused:
                        self._pause_all()
                        paused = True
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline:
                        self._idle_poll(int(min(200, max(0, (deadline - time.monotonic()) * 1000))))
                        self.update_lag()  # the backlog stays visible while paused
        finally:
            if paused:
                self._resume_ready()

    def _pause_all(self) -> None:
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        if self.metrics is not None:
            self.metrics.paused.labels(self.metrics.job).set(1)

    def _idle_poll(self, timeout_ms: int) -> None:
        """Poll to stay in the group, with everything paused (also partitions assigned meanwhile).
        Whatever still arrives is not used: its partition is sought back to the cursor."""
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        for tp, records in polled.items():
            if records and tp in self._ready:
                self._seek_back.add(tp)

    def _resume_ready(self) -> None:
        owned = set(self.consumer.assignment())
        self._apply_seek_backs()
        ready = [tp for tp in owned if tp in self._ready and tp not in self._fenced]
        if ready:
            self.consumer.resume(*ready)
        if self.metrics is not None:
            self.metrics.paused.labels(self.metrics.job).set(0)

    # -- lag and timing --------------------------------------------------------------------------

    def drained(self) -> bool:
        """Nothing is left to read: the group is settled, every partition it gives this consumer is
        restored, and each is at its end. Mid-rebalance the assignment is empty or about to change, so
        a consumer that checked only the lag there would leave with partitions still unread (seen in
        benchmarks/stream_fraud.py with 2 consumers: one left after its first batch, half the topic
        waited a session timeout or was never read)."""
        if not self._ready or self._assigned_event.is_set():
            return False
        coordinator = getattr(self.consumer, "_coordinator", None)
        state = getattr(coordinator, "state", None)
        if state is not None:
            from kafka.structs import MemberState

            if state is not MemberState.STABLE:
                return False
        if set(self.consumer.assignment()) != set(self._ready):
            return False
        return self.lag() == 0

    def lag(self) -> int:
        """Records not yet consumed on the owned partitions (1 when unknown, never a false 0)."""
        total = 0
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None or tp not in self._cursor:
                return 1
            total += max(0, hw - self._cursor[tp])
        return total

    def update_lag(self) -> None:
        if self.metrics is None:
            return
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is not None and tp in self._cursor:
                self.metrics.lag.labels(self.metrics.job, tp.topic, str(tp.partition)).set(max(0, hw - self._cursor[tp]))

    def _timed(self, step: str, fn: Callable, *args: Any) -> Any:
        if self.metrics is None:
            return fn(*args)
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.metrics.step_latency.labels(self.metrics.job, step).observe(time.perf_counter() - t)
