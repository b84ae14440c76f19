"""The consumer side every Argus stream job shares: collect a micro-batch, remember the offsets it
covers, retry a failing side effect with consumption paused, commit exactly those offsets.

A job subclasses `MicroBatchConsumer` and implements `handle(records)`: do the work, write the
store in one transaction, publish what must be published (flushed). `step()` then commits the
batch's offsets, so offsets are committed only after the store write: a crash re-reads at most the
uncommitted batch, and idempotent writes make the replay harmless (effectively once).

Generic on purpose: it knows nothing of reports or transactions (`pipelines/report_stream.py`
uses it; the fraud stream has the same collect/retry/commit steps, tied to its partition state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from pipelines.errors import ArgusError
from pipelines.kafka_io import make_consumer
from pipelines.settings import Settings

log = logging.getLogger("argus.stream")


class MicroBatchConsumer:
    def __init__(self, settings: Settings, topics: list[str], group: str, *, max_records: int = 16,
                 max_wait_ms: int = 200, retry_initial_s: float = 0.2, retry_max_s: float = 5.0, name: str = "stream-0"):
        self.settings = settings
        self.topics = topics
        self.group = group
        self.max_records = max_records
        self.max_wait_ms = max_wait_ms
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.name = name
        self.stop_event = threading.Event()
        self.consumer = make_consumer(settings, topics, group, max_poll_records=max_records, client_id=name)
        self.consumed = 0
        self.batches = 0
        self.retries = 0

    # -- to implement --------------------------------------------------------------------------

    def handle(self, records: list[Any]) -> None:
        """Process, write and publish one batch; raise to stop without committing it."""
        raise NotImplementedError

    # -- the loop --------------------------------------------------------------------------------

    def run(self, seconds: float | None = None, idle_exit_s: float | None = None, max_batches: int | None = None,
            on_batch: Callable[["MicroBatchConsumer"], None] | None = None) -> None:
        """Loop over `step()` until `stop()`, `seconds`, `max_batches`, or `idle_exit_s` without a record
        once partitions are assigned and nothing is left to read."""
        start = last_data = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if seconds is not None and time.monotonic() - start >= seconds:
                    break
                if max_batches is not None and self.batches >= max_batches:
                    break
                n = self.step()
                if n:
                    last_data = time.monotonic()
                    if on_batch:
                        on_batch(self)
                elif (idle_exit_s is not None and self.consumer.assignment()
                      and time.monotonic() - last_data >= idle_exit_s and self.lag() == 0):
                    break
        finally:
            self.close()

    def step(self) -> int:
        records = self.collect()
        if not records:
            return 0
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        self.handle(records)
        self.commit(offsets)
        self.batches += 1
        return len(records)

    def collect(self) -> list[Any]:
        """Poll until max_records, or max_wait_ms after the first record (~100 ms when none come)."""
        buffer: list[Any] = []
        first = None
        while not self.stop_event.is_set():
            timeout = 100 if first is None else int(max(0.0, self.max_wait_ms - (time.monotonic() - first) * 1000))
            for recs in self.consumer.poll(timeout_ms=timeout, max_records=self.max_records - len(buffer)).values():
                buffer.extend(recs)
            if buffer and first is None:
                first = time.monotonic()
            if len(buffer) >= self.max_records or first is None or time.monotonic() - first >= self.max_wait_ms / 1000:
                break
        self.consumed += len(buffer)
        return buffer

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        owned = self.consumer.assignment()
        mine = {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items() if tp in owned}
        if not mine:
            return
        try:
            self.retry("commit", lambda: self.consumer.commit(mine, timeout_ms=10_000))
        except CommitFailedError as exc:  # rebalanced meanwhile: the new owner redoes the batch idempotently
            log.warning("offset commit failed after a rebalance: %s", str(exc)[:200])

    def retry(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call fn until it succeeds; meanwhile consumption is paused (nothing new is fetched) and the
        consumer keeps polling so it stays in its group."""
        delay, paused = self.retry_initial_s, False
        try:
            while True:
                try:
                    return fn()
                except (ArgusError, KafkaError, OSError) as exc:
                    if self.stop_event.is_set():
                        raise
                    self.retries += 1
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        paused = True
                    log.warning("%s failed, retrying in %.1f s: %s", what, delay, str(exc)[:200])
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline:
                        self.consumer.poll(timeout_ms=int(min(200, max(0, (deadline - time.monotonic()) * 1000))))
                    delay = min(delay * 2, self.retry_max_s)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.paused())

    def lag(self) -> int:
        """Records not yet consumed on the assigned partitions."""
        assigned = self.consumer.assignment()
        if not assigned:
            return 0
        try:
            ends = self.consumer.end_offsets(list(assigned))
        except KafkaError:
            return 0
        return sum(max(0, ends[tp] - self.consumer.position(tp)) for tp in assigned)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001 - closing must not mask the original error
            pass
