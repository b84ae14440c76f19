"""The fraud stream job: Kafka transactions -> state + MoE scorer -> validated store rows + alerts.

One `FraudStreamJob` is one consumer of one consumer group; scale out by running more of them
(`services/fraud_stream_actor.py` runs them as Ray actors, up to the partition count). A
micro-batch goes through a short chain of named steps, each a method below:

    collect           poll the transactions + labels topics until max_batch records or max_wait_ms
    apply_labels      late chargebacks/confirmations -> the partition's risk state
    decode            JSON + contract (pipelines.contracts)            bad -> dead letter
    validate_input    great-expectations checks (or the same checks, fast engine)  bad -> dead letter
    deduplicate       same transaction_id: same payload -> skipped, other payload -> dead letter
    score             per partition: FraudState context + FraudScorer (the state advances)
    validate_output   score/decision checks                             bad -> dead letter
    write             scores + alerts + dead letters in ONE store transaction (retried, consumption paused)
    publish           alerts -> alerts topic, dead letters -> dead-letter topic, then flush
    commit            consumer offsets, only now
    snapshot          at most one partition per step, once its last snapshot is snapshot_interval_s old
                      and snapshot_min_records behind: its state + the offset it reflects

Effectively once: nothing is committed before it is in the store, so a crash re-reads at most the
uncommitted batch; the store upserts are idempotent on transaction_id (dead letters on their
topic/partition/offset), and the re-read records are scored against a state rebuilt to exactly
where it was (see `pipelines/fraud_state_store.py`), so a replayed row is rewritten identically.
Alerts on the alerts topic are at-least-once (a crash between publish and commit re-publishes
them); the alerts TABLE is exactly-once.

Duplicates: each score row carries the sha256 of the canonical transaction (`payload_hash`) and
the record's `topic:partition:offset` (`source_position`). A record whose id is already stored
from the SAME position is a replay (processed again, idempotently); from another position with the
same payload, a duplicate message (skipped, no state change); with another payload, a conflict
(dead letter "duplicate transaction_id with a different payload").
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from models.fraud_state import FraudState
from pipelines.contracts import ContractError, FraudScore, Label, Transaction, decode
from pipelines.errors import ArgusError, BrokerError
from pipelines.fraud_state_store import PartitionStateStore
from pipelines.kafka_io import DeadLetterPublisher, make_consumer, make_producer, topic_partitions
from pipelines.metrics import StreamMetrics, reason_kind
from pipelines.settings import Settings
from pipelines.store import DeadLetter, Store
from pipelines.validation import validate_scores, validate_transactions

log = logging.getLogger("argus.fraud_stream")


# --- configuration and small helpers ------------------------------------------------------------

@dataclass
class StreamConfig:
    transactions_topic: str = "argus.transactions"
    labels_topic: str | None = "argus.labels"
    alerts_topic: str = "argus.alerts"
    dead_letter_topic: str = "argus.dead-letter"
    group: str = "argus-fraud"
    max_batch: int = 1024  # reached only under lag; idle batches end at max_wait_ms
    max_wait_ms: int = 20
    alert_threshold: float = 0.5
    review_threshold: float = 0.2
    validation_engine: str = "fast"  # "gx" runs the great-expectations suite (~0.1-0.2 s per batch)
    snapshot_interval_s: float = 10.0
    # a partition that advanced fewer records since its last snapshot is not snapshotted yet (a
    # restore replays them from the snapshot offset anyway); bounds the snapshot CPU on the hot path
    snapshot_min_records: int = 1000
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    explain_top_k: int = 5
    max_amount: float = 1_000_000.0
    labels_delay_days: float | None = None  # None: the model's own delay
    # transactions per partition a late label can still find; bounds memory and the snapshot size
    # (a label for an older one is ignored)
    max_tracked_ids: int = 200_000

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "StreamConfig":
        f, t = settings.fraud, settings.topics
        base = dict(transactions_topic=t.transactions, labels_topic=t.labels, alerts_topic=t.alerts,
                    dead_letter_topic=t.dead_letter, group=f"{settings.kafka.consumer_group}-fraud",
                    max_batch=f.batch_max_size, max_wait_ms=f.batch_max_wait_ms, alert_threshold=f.alert_threshold,
                    review_threshold=f.review_threshold, max_amount=f.max_amount, labels_delay_days=f.labels_delay_days)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def ref(value: str | None) -> str | None:
    """A short, stable, non-reversible reference to an id, for logs (never log card/customer ids)."""
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:12]


def payload_hash(tx: Transaction) -> str:
    return hashlib.sha256(tx.model_dump_json().encode()).hexdigest()


def position(record: Any) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's `extra` fields."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("argus")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@dataclass
class StreamCounts:
    consumed: int = 0
    scored: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    alerts: int = 0
    labels: int = 0
    batches: int = 0
    rebuilt: int = 0
    store_retries: int = 0
    snapshots: int = 0
    rebalances: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Batch:
    """What one micro-batch produced; written, published and committed together."""

    records: list[Any]
    scores: list[FraudScore] = field(default_factory=list)
    score_rows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[DeadLetter, Any]] = field(default_factory=list)  # (row, source record)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to commit
    keys: dict[str, str] = field(default_factory=dict)  # transaction_id -> customer_id (alert key)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, job: "FraudStreamJob"):
        self.job = job

    def on_partitions_revoked(self, revoked):
        self.job._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        # kafka-python 3 runs this on its IO thread, where blocking consumer calls (committed) are
        # not allowed: the job restores the partitions right after the poll that assigned them
        self.job._pending_assign = set(assigned)


# --- the job --------------------------------------------------------------------------------------

class FraudStreamJob:
    """One consumer of the fraud stream. `run()` loops over `step()` until stopped."""

    def __init__(self, settings: Settings, store: Store, scorer: Any, config: StreamConfig | None = None,
                 metrics: StreamMetrics | None = None, name: str = "fraud-0"):
        self.settings, self.store, self.scorer = settings, store, scorer
        self.config = config or StreamConfig.from_settings(settings)
        self.metrics = metrics or StreamMetrics()
        self.name = name
        self.counts = StreamCounts()
        self.stop_event = threading.Event()
        c = self.config
        store.create_schema()
        self.snapshots = PartitionStateStore(store, f"{c.group}/{c.transactions_topic}")
        self._check_copartitioning()
        self.producer = make_producer(settings, linger_ms=2)
        self.dead_letter_out = DeadLetterPublisher(settings, producer=self.producer, topic=c.dead_letter_topic)
        # fetch_max_wait_ms: a broker may hold a fetch that long for more data; keep it near the batch wait
        self.consumer = make_consumer(settings, None, c.group, max_poll_records=max(c.max_batch, 1),
                                      client_id=name, fetch_max_wait_ms=max(10, c.max_wait_ms))
        self.states: dict[int, FraudState] = {}
        self.state_offset: dict[int, int] = {}  # next tx offset reflected by states[p]
        self.labels_offset: dict[int, int | None] = {}  # next labels offset reflected by states[p]
        self.rebuild_until: dict[int, int] = {}  # tx offsets below this only rebuild state (already written)
        self.committed_offset: dict[int, int] = {}  # what this consumer last committed (tx topic)
        self.last_batch: Batch | None = None  # for run(on_batch=...) hooks (the benchmark's commit times)
        self._buffer: list[Any] = []
        self._pending_assign: set[TopicPartition] | None = None
        self._in_write = False
        self._snap_time: dict[int, float] = {}  # partition -> monotonic time of its last snapshot (or assignment)
        self._snap_offset: dict[int, int] = {}  # partition -> tx offset of its last snapshot
        topics = [c.transactions_topic] + ([c.labels_topic] if c.labels_topic else [])
        self.consumer.subscribe(topics, listener=_Rebalance(self))
        self._m = {k: getattr(self.metrics, k) for k in ("consumed", "scored", "dead_letters", "alerts")}

    def _check_copartitioning(self) -> None:
        c = self.config
        if not c.labels_topic:
            return
        n_tx = topic_partitions(self.settings.kafka.bootstrap_servers, c.transactions_topic)
        n_lb = topic_partitions(self.settings.kafka.bootstrap_servers, c.labels_topic)
        if n_tx == 0:
            raise BrokerError(f"topic {c.transactions_topic} does not exist")
        if n_lb and n_lb != n_tx:
            raise ArgusError(f"labels topic {c.labels_topic} has {n_lb} partitions and {c.transactions_topic} {n_tx}: "
                             "they must match (labels are keyed by customer_id like transactions and go to the same "
                             "partition's state)")

    # -- lifecycle ---------------------------------------------------------------------------------

    def new_state(self) -> FraudState:
        delay = self.config.labels_delay_days
        return self.scorer.new_state(max_tracked_ids=self.config.max_tracked_ids,
                                     **({} if delay is None else {"labels_delay_days": delay}))

    def run(self, seconds: float | None = None, idle_exit_s: float | None = None,
            on_batch: Callable[["FraudStreamJob"], None] | None = None) -> StreamCounts:
        """Loop until `stop()`, `seconds` elapsed, or (with `idle_exit_s`) no record and no lag for that long."""
        start = last_data = time.monotonic()
        log.info("fraud stream consumer started", extra={"consumer": self.name, "group": self.config.group})
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if seconds is not None and now - start >= seconds:
                    break
                n = self.step()
                if n:
                    last_data = time.monotonic()
                    if on_batch:
                        on_batch(self)
                elif idle_exit_s is not None and time.monotonic() - last_data >= idle_exit_s and self.total_lag() == 0 \
                        and self.consumer.assignment():
                    break
        finally:
            self.close()
        return self.counts

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        try:
            self._snapshot_all(force=True)
        except Exception:  # noqa: BLE001 - closing must not mask the original error
            log.exception("final state snapshot failed", extra={"consumer": self.name})
        try:
            self.producer.flush(10)
            self.producer.close(5)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001
            pass
        log.info("fraud stream consumer stopped", extra={"consumer": self.name, **self.counts.as_dict()})

    # -- one micro-batch ---------------------------------------------------------------------------

    def step(self) -> int:
        """Collect one micro-batch and take it through every step to the offset commit; returns its size."""
        t0 = time.perf_counter()
        records = self._timed("collect", self.collect)
        if not records:
            self.update_lag()
            self.maybe_snapshot()
            return 0
        batch = self.last_batch = Batch(records)
        self._timed("process", self.process, batch)
        self._timed("write", self.write, batch)
        self._timed("publish", self.publish, batch)
        self._timed("commit", self.commit, batch)
        self.counts.batches += 1
        job = self.metrics.job
        self.metrics.batch_latency.labels(job).observe(time.perf_counter() - t0)
        self.metrics.batch_size.labels(job).observe(len(records))
        now_ms = time.time() * 1000
        for r in records[:: max(1, len(records) // 16)]:  # a sample is enough for the histogram
            if r.timestamp and r.timestamp > 0:
                self.metrics.step_latency.labels(job, "end_to_end").observe(max(0.0, now_ms - r.timestamp) / 1000)
        self.update_lag()
        self.maybe_snapshot()
        return len(records)

    def _timed(self, step: str, fn: Callable, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.metrics.step_latency.labels(self.metrics.job, step).observe(time.perf_counter() - t)

    def collect(self) -> list[Any]:
        """Poll until max_batch records or max_wait_ms after the first one (or ~100 ms with none)."""
        c = self.config
        self._buffer = []
        first = None
        while not self.stop_event.is_set():
            if first is None:
                timeout = 100
            else:
                timeout = int(max(0.0, c.max_wait_ms - (time.monotonic() - first) * 1000))
            polled = self._poll(timeout_ms=timeout, max_records=c.max_batch - len(self._buffer))
            for recs in polled.values():
                self._buffer.extend(recs)
            if self._buffer and first is None:
                first = time.monotonic()
            if len(self._buffer) >= c.max_batch or first is None or time.monotonic() - first >= c.max_wait_ms / 1000:
                break
        records, self._buffer = self._buffer, []
        for r in records:
            self.metrics.consumed.labels(self.metrics.job, r.topic).inc()
        self.counts.consumed += len(records)
        return records

    def _poll(self, timeout_ms: int, max_records: int | None = None) -> dict:
        """consumer.poll, then the restore of newly assigned partitions (records fetched for them before
        the seek are dropped: they are read again from the restored position)."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self._pending_assign is not None:
            assigned, self._pending_assign = self._pending_assign, None
            polled = {tp: recs for tp, recs in polled.items() if tp not in assigned}
            self._buffer = [r for r in self._buffer if TopicPartition(r.topic, r.partition) not in assigned]
            self._on_assigned(assigned)
        return polled

    def process(self, batch: Batch) -> None:
        """apply_labels -> decode -> validate_input -> deduplicate -> score -> validate_output."""
        c = self.config
        self._check_continuity(batch)
        tx_records, label_records = [], []
        for r in batch.records:
            tp = TopicPartition(r.topic, r.partition)
            batch.offsets[tp] = max(batch.offsets.get(tp, 0), r.offset + 1)
            (label_records if r.topic == c.labels_topic else tx_records).append(r)
        self.apply_labels(batch, label_records)
        decoded = self.decode(batch, tx_records)
        valid = self.validate_input(batch, decoded)
        fresh = self.deduplicate(batch, valid)
        scored = self.score(batch, fresh)
        self.validate_output(batch, scored)
        for tp, nxt in batch.offsets.items():
            if tp.topic == c.transactions_topic and tp.partition in self.states:
                self.state_offset[tp.partition] = nxt
            elif tp.partition in self.states:
                self.labels_offset[tp.partition] = nxt

    def _check_continuity(self, batch: Batch) -> None:
        """A partition read from BEFORE the offset its state reflects (an offset reset without a
        rebalance, e.g. a broker that lost its log) would apply records to the state twice: restore
        that partition from its snapshot instead, and read it again from there."""
        c = self.config
        first: dict[int, int] = {}
        for r in batch.records:
            if r.topic == c.transactions_topic:
                first[r.partition] = min(first.get(r.partition, r.offset), r.offset)
        rewound = {p for p, o in first.items() if p in self.state_offset and o < self.state_offset[p]}
        if not rewound:
            return
        log.warning("partition read position went back; restoring its state", extra={
            "consumer": self.name, "partitions": sorted(rewound)})
        batch.records = [r for r in batch.records if r.partition not in rewound]
        tps = {TopicPartition(c.transactions_topic, p) for p in rewound}
        if c.labels_topic:
            tps |= {TopicPartition(c.labels_topic, p) for p in rewound}
        self._on_assigned(tps)

    def _dead(self, batch: Batch, record: Any, reason: str, stage: str) -> None:
        batch.dead_letters.append((DeadLetter(source=record.topic, reason=reason, stage=stage, payload=record.value,
                                              partition=record.partition, offset=record.offset), record))
        self.metrics.dead_letters.labels(self.metrics.job, stage, reason_kind(reason)).inc()
        log.warning("dead letter", extra={"consumer": self.name, "stage": stage, "reason": reason[:200],
                                          "position": position(record)})

    def _rebuilding(self, record: Any) -> bool:
        return record.offset < self.rebuild_until.get(record.partition, -1)

    def apply_labels(self, batch: Batch, records: list[Any]) -> None:
        by_part: dict[int, list[Label]] = defaultdict(list)
        for r in records:
            try:
                by_part[r.partition].append(decode(Label, r.value, self.settings.kafka.max_message_bytes))
            except ContractError as exc:
                if not self._rebuilding(r):
                    self._dead(batch, r, exc.reason, "decode_label")
        for p, labels in by_part.items():
            if p in self.states:
                self.states[p].apply_labels(labels)
                self.counts.labels += len(labels)
                self.metrics.labels.labels(self.metrics.job).inc(len(labels))

    def decode(self, batch: Batch, records: list[Any]) -> list[tuple[Transaction, Any]]:
        out = []
        limit = self.settings.kafka.max_message_bytes
        for r in records:
            try:
                out.append((decode(Transaction, r.value, limit), r))
            except ContractError as exc:
                self._dead(batch, r, exc.reason, "decode")
        return out

    def validate_input(self, batch: Batch, decoded: list[tuple[Transaction, Any]]) -> list[tuple[Transaction, Any]]:
        if not decoded:
            return []
        # plain dicts of the checked fields (a full model_dump per row costs more than the checks)
        plain = [{"transaction_id": tx.transaction_id, "customer_id": tx.customer_id, "terminal_id": tx.terminal_id,
                  "amount": tx.amount, "timestamp": tx.timestamp, "_i": i} for i, (tx, _) in enumerate(decoded)]
        result = validate_transactions(plain, max_amount=self.config.max_amount, engine=self.config.validation_engine)
        if result.ok:
            return decoded
        bad = {row["_i"]: reason for row, reason in result.failures}
        good = []
        for i, (tx, r) in enumerate(decoded):
            if i in bad:
                self._dead(batch, r, bad[i], "validate_input")
            else:
                good.append((tx, r))
        return good

    def deduplicate(self, batch: Batch, items: list[tuple[Transaction, Any]]) -> list[tuple[Transaction, Any, str]]:
        """Drop same-payload duplicates, dead-letter other-payload ones; replays of our own writes pass."""
        if not items:
            return []
        stored = self.store.score_provenance(tx.transaction_id for tx, _ in items)
        seen: dict[str, tuple[str, str]] = {}
        out = []
        for tx, r in items:
            h, pos = payload_hash(tx), position(r)
            prior = seen.get(tx.transaction_id) or stored.get(tx.transaction_id)
            if prior is not None and prior[0] is not None and prior[1] != pos:
                if prior[0] == h:
                    self.counts.duplicates += 1
                    self.metrics.duplicates.labels(self.metrics.job).inc()
                else:
                    self._dead(batch, r, "duplicate transaction_id with a different payload "
                                         f"(first seen at {prior[1]})", "deduplicate")
                continue
            seen[tx.transaction_id] = (h, pos)
            out.append((tx, r, h))
        return out

    def score(self, batch: Batch, items: list[tuple[Transaction, Any, str]]) -> list[tuple[FraudScore, Transaction, Any, str]]:
        """Per partition, in offset order: context from the partition's state, one scorer call; the
        state advances. Records below the rebuild mark only advance the state (already written)."""
        by_part: dict[int, list[tuple[Transaction, Any, str]]] = defaultdict(list)
        for item in items:
            by_part[item[1].partition].append(item)
        out = []
        c = self.config
        for p, part in by_part.items():
            state = self.states.get(p)
            if state is None:  # revoked while collecting: its owner re-reads it
                continue
            rebuild = [it for it in part if self._rebuilding(it[1])]
            live = [it for it in part if not self._rebuilding(it[1])]
            if rebuild:
                state.advance_batch([tx for tx, _, _ in rebuild])
                self.counts.rebuilt += len(rebuild)
            if not live:
                continue
            scores = self.scorer.score([tx for tx, _, _ in live], state, c.alert_threshold, c.review_threshold,
                                       explain_top_k=c.explain_top_k)
            out.extend((s, tx, r, h) for s, (tx, r, h) in zip(scores, live))
        # dead letters of records that were only rebuilt are already in the store
        batch.dead_letters = [(d, r) for d, r in batch.dead_letters if not self._rebuilding(r) or r.topic != c.transactions_topic]
        return out

    def validate_output(self, batch: Batch, scored: list[tuple[FraudScore, Transaction, Any, str]]) -> None:
        if not scored:
            return
        c = self.config
        plain = [{"transaction_id": s.transaction_id, "model_version": s.model_version, "score": s.score,
                  "decision": s.decision.value, "_i": i} for i, (s, *_) in enumerate(scored)]
        result = validate_scores(plain, alert_threshold=c.alert_threshold, review_threshold=c.review_threshold,
                                 engine=c.validation_engine)
        bad = {row["_i"]: reason for row, reason in result.failures}
        job = self.metrics.job
        for i, (s, tx, r, h) in enumerate(scored):
            if i in bad:
                self._dead(batch, r, bad[i], "validate_output")
                continue
            # the fraud_scores row, built directly (score_row's model_dump of each Reason costs ~40 us a row)
            row = {"transaction_id": s.transaction_id, "score": float(s.score), "decision": s.decision.value,
                   "reasons": [dict(x) for x in s.reasons], "model_version": s.model_version, "scored_at": s.scored_at,
                   "customer_id": tx.customer_id, "terminal_id": tx.terminal_id, "timestamp": tx.timestamp,
                   "amount": tx.amount, "payload_hash": h, "source_position": position(r)}
            batch.scores.append(s)
            batch.score_rows.append(row)
            batch.keys[s.transaction_id] = tx.customer_id
            self.metrics.scores.labels(job).observe(s.score)
            if s.score >= c.alert_threshold:
                batch.alerts.append(row)

    # -- side effects, in order ------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], Any], on_error: Callable[[], None] | None = None) -> Any:
        """Call fn until it succeeds; while it fails, consumption is paused (backpressure: nothing new
        is fetched, memory stays at one batch) and the consumer keeps its group membership."""
        delay = self.config.retry_initial_s
        paused = False
        try:
            while True:
                try:
                    return fn()
                except CommitFailedError:
                    raise  # the group moved on (rebalance): retrying cannot succeed, the caller decides
                except (ArgusError, KafkaError, OSError) as exc:
                    if self.stop_event.is_set():
                        raise
                    if on_error is not None:
                        on_error()
                    self.counts.store_retries += 1
                    self.metrics.store_retries.labels(self.metrics.job).inc()
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        self.metrics.paused.labels(self.metrics.job).set(1)
                        paused = True
                    log.warning(f"{what} failed ({type(exc).__name__}); retrying", extra={"consumer": self.name, "retry_in_s": round(delay, 2),
                                                                   "error": str(exc)[:200]})
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline:  # poll (paused: returns nothing) to stay in the group
                        self._poll(timeout_ms=int(min(200, max(0, (deadline - time.monotonic()) * 1000))))
                        self.update_lag()
                    delay = min(delay * 2, self.config.retry_max_s)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.paused())
                self.metrics.paused.labels(self.metrics.job).set(0)

    def write(self, batch: Batch) -> None:
        """Scores + alerts + dead letters in one store transaction, retried until it succeeds."""
        if not (batch.score_rows or batch.dead_letters):
            return
        self._in_write = True
        try:
            self._retry("store write", lambda: self.store.write_batch(
                scores=batch.score_rows, alerts=batch.alerts, dead_letters=[d for d, _ in batch.dead_letters]))
        finally:
            self._in_write = False
        job = self.metrics.job
        self.metrics.scored.labels(job).inc(len(batch.score_rows))
        self.counts.scored += len(batch.score_rows)
        self.counts.dead_letters += len(batch.dead_letters)

    def publish(self, batch: Batch) -> None:
        """Alerts to the alerts topic and dead letters to the dead-letter topic, flushed before the commit."""
        if not (batch.alerts or batch.dead_letters):
            return
        c = self.config

        def send_and_flush() -> None:
            sent = []
            for row in batch.alerts:
                alert = {"transaction_id": row["transaction_id"], "score": row["score"], "decision": row["decision"],
                         "reasons": row["reasons"], "model_version": row["model_version"],
                         "scored_at": row["scored_at"].isoformat(), "timestamp": row["timestamp"].isoformat(),
                         "amount": row["amount"]}
                sent.append(self.producer.send(c.alerts_topic, alert, key=batch.keys.get(row["transaction_id"])))
            for d, r in batch.dead_letters:
                sent.append(self.dead_letter_out.publish_record(r, d.reason))
            self.producer.flush(timeout=10)
            for future in sent:  # flush() returns even when batches were aborted: check each send
                future.get(timeout=0)

        def new_producer() -> None:
            # a producer can be left in a fatal state (e.g. its producer id unknown to a restarted
            # broker): start over with a fresh one; the batch is re-sent whole (at-least-once)
            try:
                self.producer.close(0)
            except Exception:  # noqa: BLE001
                pass
            self.producer = make_producer(self.settings, linger_ms=2)
            self.dead_letter_out = DeadLetterPublisher(self.settings, producer=self.producer, topic=c.dead_letter_topic)

        self._in_write = True
        try:
            self._retry("publish", send_and_flush, on_error=new_producer)
        finally:
            self._in_write = False
        self.counts.alerts += len(batch.alerts)
        self.metrics.alerts.labels(self.metrics.job).inc(len(batch.alerts))

    def commit(self, batch: Batch) -> None:
        owned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in batch.offsets.items() if tp in owned}
        if not offsets:
            return
        try:
            self._retry("commit", lambda: self.consumer.commit(offsets, timeout_ms=10_000))
            for tp, o in offsets.items():
                if tp.topic == self.config.transactions_topic:
                    self.committed_offset[tp.partition] = o.offset
        except CommitFailedError as exc:  # rebalanced meanwhile: the new owner rewrites the batch idempotently
            log.warning("offset commit failed after a rebalance", extra={"consumer": self.name, "error": str(exc)[:200]})

    # -- state: snapshots and rebalances ---------------------------------------------------------

    def maybe_snapshot(self) -> None:
        """Snapshot the stalest due partition, ONE per step: the snapshots of all partitions at once
        would stall one batch (a latency spike); spread over steps they cost the same CPU in total."""
        c, now = self.config, time.monotonic()
        due = [p for p in self.states
               if now - self._snap_time.get(p, now) >= c.snapshot_interval_s
               and self.state_offset.get(p, 0) - self._snap_offset.get(p, 0) >= c.snapshot_min_records
               and self.committed_offset.get(p) == self.state_offset.get(p)]
        if due:
            self._snapshot(min(due, key=lambda p: self._snap_time.get(p, now)))

    def _snapshot_all(self, force: bool = False) -> None:
        for p in list(self.states):
            self._snapshot(p)

    def _snapshot(self, p: int) -> bool:
        """Save partition p's state if it reflects exactly the committed offset (else the owner rebuilds)."""
        offset = self.state_offset.get(p)
        if offset is None or self.committed_offset.get(p) != offset:
            return False
        self.snapshots.save(p, offset, self.labels_offset.get(p), self.states[p].snapshot(),
                            getattr(self.scorer, "model_version", None))
        self._snap_time[p], self._snap_offset[p] = time.monotonic(), offset
        self.counts.snapshots += 1
        self.metrics.snapshots.labels(self.metrics.job).inc()
        return True

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == self.config.transactions_topic}
        self.counts.rebalances += 1
        for p in parts:
            if p in self.states and not self._in_write:
                try:
                    self._snapshot(p)
                except Exception:  # noqa: BLE001 - the next owner rebuilds from an older snapshot
                    log.exception("snapshot on revoke failed", extra={"consumer": self.name, "partition": p})
            for d in (self.states, self.state_offset, self.labels_offset, self.rebuild_until, self.committed_offset,
                      self._snap_time, self._snap_offset):
                d.pop(p, None)
        gone = {(tp.topic, tp.partition) for tp in revoked}
        self._buffer = [r for r in self._buffer if (r.topic, r.partition) not in gone]
        log.info("partitions revoked", extra={"consumer": self.name, "partitions": sorted(parts)})

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        c = self.config
        tx_parts = sorted(tp.partition for tp in assigned if tp.topic == c.transactions_topic)
        label_parts = {tp.partition for tp in assigned if tp.topic == c.labels_topic}
        for p in tx_parts:
            tp = TopicPartition(c.transactions_topic, p)
            snap = self.snapshots.load(p)
            committed = self.consumer.committed(tp, timeout_ms=10_000)
            if snap is not None and committed is not None and snap.tx_offset <= committed:
                state = self.new_state().restore(snap.state)
                start, labels_at = snap.tx_offset, snap.labels_offset
            else:  # no usable snapshot: rebuild from the start of the partition
                state, start, labels_at = self.new_state(), None, None
            self.states[p] = state
            if start is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, start)
            self.state_offset[p] = start if start is not None else 0
            self._snap_time[p], self._snap_offset[p] = time.monotonic(), self.state_offset[p]
            if committed is not None:
                self.committed_offset[p] = committed
            self.rebuild_until[p] = committed or 0
            self.labels_offset[p] = labels_at
            if p in label_parts:
                ltp = TopicPartition(c.labels_topic, p)
                if labels_at is None:
                    self.consumer.seek_to_beginning(ltp)
                else:
                    self.consumer.seek(ltp, labels_at)
            log.info("partition assigned", extra={"consumer": self.name, "partition": p, "snapshot_offset": start,
                                                  "committed": committed,
                                                  "replay": (committed or 0) - (start or 0)})

    # -- lag ---------------------------------------------------------------------------------------

    def update_lag(self) -> None:
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=100) if hasattr(self.consumer, "position") else None
            except Exception:  # noqa: BLE001 - no position yet
                continue
            if pos is not None:
                self.metrics.lag.labels(self.metrics.job, tp.topic, str(tp.partition)).set(max(0, hw - pos))

    def total_lag(self) -> int:
        total = 0
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                return 1  # not fetched yet: unknown, not zero
            try:
                total += max(0, hw - self.consumer.position(tp, timeout_ms=100))
            except Exception:  # noqa: BLE001
                return 1
        return total


# --- running without Ray (tests of the core, the benchmark's in-process mode) ---------------------

def load_scorer(checkpoint: str | None = None, threads: int | None = None) -> Any:
    from models.fraud_scorer import FraudScorer, default_threads

    return FraudScorer.load(checkpoint, threads=threads or default_threads())


def build_job(settings: Settings, store_url: str, checkpoint: str | None = None, name: str = "fraud-0",
              metrics_port: int | None = None, **config_overrides: Any) -> FraudStreamJob:
    store = Store.from_url(store_url)
    config = StreamConfig.from_settings(settings, **config_overrides)
    metrics = StreamMetrics()
    if metrics_port:
        metrics.serve(metrics_port)
    return FraudStreamJob(settings, store, load_scorer(checkpoint), config, metrics, name=name)
