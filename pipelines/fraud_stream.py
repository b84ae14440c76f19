"""The fraud stream job: Kafka transactions -> state + MoE scorer -> validated store rows + alerts.

The job is its steps and its state; the loop (poll, pause, retry, positions, commit, stop) is
`pipelines/stream_runtime.py`. One `FraudStreamJob` is one consumer of one consumer group; scale
out by running more (`services/fraud_stream_actor.py`, up to the partition count). A batch:

    apply_labels      chargebacks/confirmations -> the partition's risk state    bad -> dead letter
    apply_dispositions investigators' verdicts -> the partition's review memory  bad -> dead letter
    decode            bytes -> Transaction (pipelines.contracts: never raises)    bad -> dead letter
    validate_input    great-expectations checks (or the same checks, fast engine)  bad -> dead letter
    deduplicate       same transaction_id: same payload -> skipped, other payload -> dead letter
    score             per partition: state context (the state advances) + one scorer call
    validate_output   score/decision checks                                       bad -> dead letter
    write             scores + alerts + dead letters + positions (+ a due snapshot): ONE transaction
    publish           alerts -> alerts topic, dead letters -> dead-letter topic, flushed

No record can stop the job: any exception raised for a record in decode, validation, state update
or scoring sends that record to the dead letters with its stage and reason, and the batch goes on
(a failing batch step is retried row by row to find the record).

Exactly-once into the store: the runtime claims each partition in the store on assignment and
hands the records below the stored position back as `replay` (state only: they go through the same
decode/validate/deduplicate steps so the state advances exactly as it did, but nothing is written).
The batch's rows, the positions and the snapshot move in one transaction, refused for a partition
another consumer has claimed since. Alerts on the alerts topic are at-least-once (a crash between
the write and the publish re-publishes them); the alerts TABLE is exactly-once.

Duplicates: each score row carries the sha256 of the canonical transaction (`payload_hash`) and
the record's `topic:partition:offset` (`source_position`). A record whose id is already stored
from the SAME position is a replay; from another position with the same payload, a duplicate
message (skipped, no state change); with another payload, a conflict (dead letter).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from models.fraud_state import FraudState, LabelStatus
from pipelines.contracts import ContractError, Disposition, Label, Transaction, decode
from pipelines.errors import ArgusError, BrokerError, StoreRejected
from pipelines.fraud_state_store import PartitionStateStore
from pipelines.kafka_io import DeadLetterPublisher, make_producer, topic_partitions
from pipelines.metrics import StreamMetrics, reason_kind
from pipelines.model_holder import ModelHolder
from pipelines.settings import Settings
from pipelines.store import DeadLetter, Store
from pipelines.stream_positions import Claim, fence
from pipelines.stream_runtime import Batch, PartitionBatch, RetryPolicy, StreamRuntime
from pipelines.validation import checks_for, validate_scores, validate_transactions

log = logging.getLogger("argus.fraud_stream")


# --- configuration and small helpers ------------------------------------------------------------

@dataclass
class StreamConfig:
    transactions_topic: str = "argus.transactions"
    labels_topic: str | None = "argus.labels"
    # investigators' verdicts on alerts (pipelines/alert_review.py), keyed by customer_id like the labels;
    # None or "" reads none
    dispositions_topic: str | None = "argus.dispositions"
    alerts_topic: str = "argus.alerts"
    dead_letter_topic: str = "argus.dead-letter"
    group: str = "argus-fraud"
    max_batch: int = 1024  # reached only under lag; without lag a batch ends once the partitions are read
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
    # transactions per partition a late label can still find in memory (older ones: the store lookup)
    max_tracked_ids: int = 200_000
    # a label whose transaction never came goes to the dead letters after this much event time
    pending_horizon_days: float = 2.0
    # customers/terminals idle this long are forgotten (None: the state's default, >= every feature window)
    idle_evict_days: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "StreamConfig":
        f, t = settings.fraud, settings.topics
        base = dict(transactions_topic=t.transactions, labels_topic=t.labels, dispositions_topic=t.dispositions,
                    alerts_topic=t.alerts,
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
    dispositions: int = 0
    batches: int = 0
    rebuilt: int = 0
    store_retries: int = 0
    snapshots: int = 0
    rebalances: int = 0
    fenced: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# --- typed items of one batch ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Position:
    """A record's coordinates (and a payload) for a dead letter of a record no longer in hand."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None

@dataclass
class Item:
    """One transaction record on its way through the steps."""

    record: Any
    tx: Transaction
    hash: str = ""
    # the scorer's answer (FraudScorer.score_columns: plain values, no contract object per row)
    score: float | None = None
    decision: str = ""
    reasons: list[dict[str, Any]] = field(default_factory=list)
    model_version: str | None = None
    scored_at: datetime | None = None


def _out_of(po: "PartitionOut | Callable[[Any], PartitionOut]", item: Any) -> "PartitionOut":
    """A step's dead-letter target: one partition's output, or a function finding the item's."""
    return po(item) if callable(po) else po


@dataclass
class PartitionOut:
    """What one partition's records produced: written together, dropped together."""

    score_rows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[DeadLetter, Any]] = field(default_factory=list)  # (row, source record)
    keys: dict[str, str] = field(default_factory=dict)  # transaction_id -> customer_id (alert key)
    # (tx offset, labels offset, dispositions offset, state)
    snapshot: tuple[int, int | None, int | None, bytes] | None = None


@dataclass
class Output:
    parts: dict[int, PartitionOut] = field(default_factory=dict)

    def part(self, p: int) -> PartitionOut:
        return self.parts.get(p) or self.parts.setdefault(p, PartitionOut())

    @property
    def score_rows(self) -> list[dict[str, Any]]:
        return [r for o in self.parts.values() for r in o.score_rows]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [r for o in self.parts.values() for r in o.alerts]

    @property
    def dead_letters(self) -> list[tuple[DeadLetter, Any]]:
        return [d for o in self.parts.values() for d in o.dead_letters]


@dataclass
class OwnedPartition:
    """Everything this consumer keeps for one partition number (transactions + co-partitioned labels
    and dispositions)."""

    state: FraudState
    tx_next: int | None  # next transactions offset reflected by the state (None: from the start)
    labels_next: int | None  # next labels offset reflected by the state
    dispositions_next: int | None = None  # next dispositions offset reflected by the state
    snap_time: float = field(default_factory=time.monotonic)
    snap_tx: int = 0  # tx offset of the last snapshot
    epochs: dict[str, int] = field(default_factory=dict)  # topic -> claimed epoch


# --- the job --------------------------------------------------------------------------------------

class FraudStreamJob:
    """One consumer of the fraud stream. `run()` loops until stopped (the runtime's loop)."""

    def __init__(self, settings: Settings, store: Store, scorer: Any, config: StreamConfig | None = None,
                 metrics: StreamMetrics | None = None, name: str = "fraud-0", models: ModelHolder | None = None):
        self.settings, self.store, self.scorer = settings, store, scorer
        self.models = models  # follows the registry's champion: asked once per batch, before its steps
        self.config = c = config or StreamConfig.from_settings(settings)
        self.metrics = metrics or StreamMetrics()
        self.name = name
        self.metrics.model_info.labels(self.metrics.job, getattr(scorer, "model_version", None) or "unknown").set(1)
        self.counts = StreamCounts()
        store.create_schema()
        self.snapshots = PartitionStateStore(store, f"{c.group}/{c.transactions_topic}")
        self._check_copartitioning()
        self.producer = make_producer(settings, linger_ms=2)
        self.dead_letter_out = DeadLetterPublisher(settings, producer=self.producer, topic=c.dead_letter_topic)
        self.owned: dict[int, OwnedPartition] = {}
        self.last_output: Output | None = None
        # the suites' checks are read from great-expectations, whose import takes seconds: before the
        # group join, not in the first batch (it held that batch's records ~5 s)
        checks_for("transactions"), checks_for("scores")
        topics = [c.transactions_topic] + [t for t in (c.labels_topic, c.dispositions_topic) if t]
        self.runtime = StreamRuntime(settings, store, self, topics, c.group, name=name, max_records=c.max_batch,
                                     max_wait_ms=c.max_wait_ms, metrics=self.metrics,
                                     retry=RetryPolicy(c.retry_initial_s, c.retry_max_s))

    @property
    def consumer(self):
        return self.runtime.consumer  # the runtime may start a fresh one (a stalled rebalance)

    def _check_copartitioning(self) -> None:
        c = self.config
        sides = [(what, topic) for what, topic in (("labels", c.labels_topic), ("dispositions", c.dispositions_topic))
                 if topic]
        if not sides:
            return
        n_tx = topic_partitions(self.settings.kafka.bootstrap_servers, c.transactions_topic, self.settings)
        if n_tx == 0:
            raise BrokerError(f"topic {c.transactions_topic} does not exist")
        for what, topic in sides:
            n = topic_partitions(self.settings.kafka.bootstrap_servers, topic, self.settings)
            if n and n != n_tx:
                raise ArgusError(f"{what} topic {topic} has {n} partitions and {c.transactions_topic} {n_tx}: "
                                 f"they must match ({what} are keyed by customer_id like transactions and go to the "
                                 "same partition's state)")

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def states(self) -> dict[int, FraudState]:
        return {p: o.state for p, o in self.owned.items()}

    def new_state(self) -> FraudState:
        delay = self.config.labels_delay_days
        c = self.config
        return self.scorer.new_state(max_tracked_ids=c.max_tracked_ids, pending_horizon_days=c.pending_horizon_days,
                                     idle_evict_days=c.idle_evict_days,
                                     **({} if delay is None else {"labels_delay_days": delay}))

    def run(self, seconds: float | None = None, idle_exit_s: float | None = None,
            on_batch: Callable[["FraudStreamJob"], None] | None = None) -> StreamCounts:
        """Loop until `stop()`, `seconds` elapsed, or (with `idle_exit_s`) no record and no lag for that long."""
        hook = (lambda rt, batch: on_batch(self)) if on_batch else None
        try:
            self.runtime.run(seconds=seconds, idle_exit_s=idle_exit_s, on_batch=hook)
        finally:
            self._sync_counts()
        return self.counts

    def step(self) -> int:
        batch = self.runtime.step()
        self._sync_counts()
        return 0 if batch is None else len(batch)

    def _sync_counts(self) -> None:
        rc = self.runtime.counts
        self.counts.consumed, self.counts.batches = rc.consumed, rc.batches
        self.counts.store_retries, self.counts.fenced = rc.retries, rc.fenced
        self.counts.rebalances = self.runtime.rebalances

    def stop(self) -> None:
        self.runtime.stop()

    def close(self) -> None:
        """On a clean stop: snapshot every owned partition (fenced: only while this consumer holds it)."""
        try:
            steps, epochs = [], {}
            for p, o in self.owned.items():
                if o.tx_next is None:
                    continue
                steps.append(self.snapshots.save_step(p, o.tx_next, o.labels_next, o.dispositions_next,
                                                      o.state.snapshot(), getattr(self.scorer, "model_version", None)))
                epochs.update({(topic, p): e for topic, e in o.epochs.items()})
            if steps:
                self.store.write_batch(also=[fence(self.config.group, epochs), *steps])
                self.counts.snapshots += len(steps)
        except Exception:  # noqa: BLE001 - the next owner replays from an older snapshot
            log.warning("final state snapshot not written", extra={"consumer": self.name}, exc_info=True)
        try:
            self.producer.flush(10)
            self.producer.close(5)
        except Exception:  # noqa: BLE001
            pass
        log.info("fraud stream consumer stopped", extra={"consumer": self.name, **self.counts.as_dict()})

    # -- partitions (called by the runtime) ---------------------------------------------------------

    def restore(self, claims: dict[TopicPartition, Claim]) -> dict[TopicPartition, int | None]:
        """Each newly owned partition: its snapshot if it is not past the stored positions, else a
        fresh state from the beginning; returns where to read each topic partition from."""
        c = self.config
        starts: dict[TopicPartition, int | None] = {}
        for p in sorted({tp.partition for tp in claims}):
            tx_tp, lb_tp = TopicPartition(c.transactions_topic, p), TopicPartition(c.labels_topic or "", p)
            ds_tp = TopicPartition(c.dispositions_topic or "", p)
            tx_claim, lb_claim, ds_claim = claims.get(tx_tp), claims.get(lb_tp), claims.get(ds_tp)
            owned = self.owned.get(p)
            if owned is None:
                snap = self.snapshots.load(p)
                # a side offset of None (a snapshot from before that topic was read) reads it from the start
                not_ahead = lambda claim, offset: (claim is None or claim.next_offset is None or offset is None  # noqa: E731
                                                   or offset <= claim.next_offset)
                usable = (snap is not None and tx_claim is not None and tx_claim.next_offset is not None
                          and snap.tx_offset <= tx_claim.next_offset
                          and not_ahead(lb_claim, snap.labels_offset) and not_ahead(ds_claim, snap.dispositions_offset))
                if usable:
                    owned = OwnedPartition(self.new_state().restore(snap.state), snap.tx_offset, snap.labels_offset,
                                           snap.dispositions_offset, snap_tx=snap.tx_offset)
                else:
                    owned = OwnedPartition(self.new_state(), None, None)
                self.owned[p] = owned
            if tx_claim is not None:
                owned.epochs[tx_tp.topic] = tx_claim.epoch
                starts[tx_tp] = owned.tx_next
            if lb_claim is not None:
                owned.epochs[lb_tp.topic] = lb_claim.epoch
                starts[lb_tp] = owned.labels_next if owned.tx_next is not None else None
            if ds_claim is not None:
                owned.epochs[ds_tp.topic] = ds_claim.epoch
                starts[ds_tp] = owned.dispositions_next if owned.tx_next is not None else None
            log.info("partition restored", extra={"consumer": self.name, "partition": p,
                                                  "snapshot_offset": owned.tx_next,
                                                  "stored": None if tx_claim is None else tx_claim.next_offset})
        return starts

    def release(self, tps: set[TopicPartition]) -> set[TopicPartition]:
        """Forget the partitions' state; the sibling topic partition of a dropped state must be
        restored again (its state is gone with it)."""
        c = self.config
        siblings = set()
        for p in {tp.partition for tp in tps}:
            if self.owned.pop(p, None) is not None:
                siblings |= {TopicPartition(t, p) for t in (c.transactions_topic, c.labels_topic, c.dispositions_topic)
                             if t}
        return siblings - tps

    # -- the steps over one batch ------------------------------------------------------------------

    def process(self, batch: Batch) -> Output:
        """decode -> validate_input -> deduplicate over the whole batch (each a fixed cost per call:
        once, not once per partition), then per partition in offset order apply_labels ->
        apply_dispositions -> advance the state, then one score call and validate_output over the batch."""
        c = self.config
        if self.models is not None:  # between batches: the whole batch is scored by one model version
            scorer = self.models.current()
            if scorer is not self.scorer:  # a promotion: the model-info gauge names the version now scoring
                info = self.metrics.model_info
                info.labels(self.metrics.job, getattr(self.scorer, "model_version", None) or "unknown").set(0)
                info.labels(self.metrics.job, scorer.model_version).set(1)
                self.scorer = scorer
        out = Output()
        by_p: dict[int, dict[str, PartitionBatch]] = {}
        for tp, pb in batch.parts.items():
            if self.owned.get(tp.partition) is not None:  # else released while collecting: its next owner reads it
                by_p.setdefault(tp.partition, {})[tp.topic] = pb
        live = {p: (out.part(p), parts[c.transactions_topic].live) for p, parts in by_p.items()
                if c.transactions_topic in parts and parts[c.transactions_topic].live}
        fresh = self.admit(live)
        advanced: list[tuple[PartitionOut, Item, Any]] = []
        for p, parts in sorted(by_p.items()):
            owned = self.owned[p]
            po = out.part(p)
            labels, txs = parts.get(c.labels_topic or ""), parts.get(c.transactions_topic)
            if labels is not None:
                self.apply_labels(po, owned, labels)
                owned.labels_next = (labels.live or labels.replay)[-1].offset + 1
            # before the partition's transactions: a verdict is visible from its decided time on anyway
            verdicts = parts.get(c.dispositions_topic or "")
            if verdicts is not None:
                self.apply_dispositions(po, owned, verdicts)
                owned.dispositions_next = (verdicts.live or verdicts.replay)[-1].offset + 1
            if txs is not None:
                if txs.replay:
                    self.rebuild(owned, txs.replay)
                    self._expire_labels(po, owned)
                if txs.live:
                    advanced.extend((po, it, ctx) for it, ctx in self._advance(po, owned, fresh.get(p, [])))
                    self._expire_labels(po, owned)
                owned.tx_next = (txs.live or txs.replay)[-1].offset + 1
        # one scorer call for every partition's rows (each read from its own partition's state above):
        # the forward's and the reasons' fixed costs once per batch, not once per partition
        self.score(advanced)
        self.validate_output([(po, it) for po, it, _ in advanced if it.score is not None])
        self._pick_snapshot(out, {tp.partition for tp, pb in batch.parts.items()
                                  if tp.topic == c.transactions_topic and pb.live})
        self.last_output = out
        return out

    def admit(self, live: dict[int, tuple[PartitionOut, list[Any]]]) -> dict[int, list[Item]]:
        """decode -> validate_input -> deduplicate for every partition's live records at once; what
        fails goes to its own partition's dead letters. {partition: items to score, in offset order}."""
        items = [it for po, records in live.values() for it in self.decode(po, records)]
        if not items:
            return {}
        out_of = lambda it: live[it.record.partition][0]  # noqa: E731 - an item's partition is its record's
        items = self.deduplicate(out_of, self.validate_input(out_of, items))
        fresh: dict[int, list[Item]] = {}
        for it in items:
            fresh.setdefault(it.record.partition, []).append(it)
        return fresh

    def _decoded(self, po: PartitionOut, model: Any, records: list, replay: bool, stage: str) -> list[tuple[Any, Any]]:
        """(decoded, record) of the records that are a `model`; a live one that is not goes to the dead letters
        at `stage` (a replayed one went there when it was live)."""
        limit = self.settings.kafka.max_message_bytes
        good = []
        for r in records:
            try:
                good.append((decode(model, r.value, limit), r))
            except ContractError as exc:
                if not replay:
                    self._dead(po, r, exc.reason, stage)
        return good

    def apply_labels(self, po: PartitionOut, owned: OwnedPartition, pb: PartitionBatch) -> None:
        """Labels -> the partition's state. One whose transaction left the in-memory index is located
        in the store (fraud_scores), so a chargeback 7+ days late still reaches the right keys; one
        whose transaction was never seen waits (`pending_horizon_days` of event time), then goes to
        the dead letters with its reason. Replayed labels update the state only."""
        for replay, records in ((True, pb.replay), (False, pb.live)):
            good = self._decoded(po, Label, records, replay, "decode_label")
            if good:
                self._place_labels(owned, good)
                self.counts.labels += len(good)
                self.metrics.labels.labels(self.metrics.job).inc(len(good))
            self._expire_labels(po, owned)

    def apply_dispositions(self, po: PartitionOut, owned: OwnedPartition, pb: PartitionBatch) -> None:
        """Investigators' verdicts (`Disposition`, pipelines/alert_review.py) -> the partition's review
        memories, at once: each is visible to transactions from its `disposed_at` on (read time), so
        applying it before or after some transactions changes no score, and applying it again (a replay,
        an old snapshot) is a no-op. A verdict without a customer or terminal is located in the store
        (`fraud_scores`) or the state's index; one found in neither is dead-lettered (stage
        `disposition`), as is any record that is not a Disposition (`decode_disposition`). Replayed
        verdicts update the state only."""
        for replay, records in ((True, pb.replay), (False, pb.live)):
            good = self._decoded(po, Disposition, records, replay, "decode_disposition")
            if not good:
                continue
            where: dict[str, tuple] = {}
            missing = [d.transaction_id for d, _ in good if d.customer_id is None or d.terminal_id is None]
            if missing:
                where = self.runtime.retry("disposition lookup", lambda: self.store.score_locations(missing))
            applied = 0
            for d, r in good:  # one by one: a verdict the state refuses is that record's dead letter, not the batch's
                c, t = d.customer_id, d.terminal_id
                if (c is None or t is None) and where.get(d.transaction_id) is not None:
                    found = where[d.transaction_id]
                    c, t = c if c is not None else found[0], t if t is not None else found[1]
                try:
                    status = owned.state.apply_dispositions([d.transaction_id], [d.disposition.value], [d.disposed_at],
                                                            [c], [t])[0]
                except Exception as exc:  # noqa: BLE001
                    if not replay:
                        self._dead(po, r, f"disposition not applied: {type(exc).__name__}", "disposition")
                    continue
                if status == LabelStatus.UNKNOWN:
                    if not replay:
                        self._dead(po, r, "disposition for an unknown transaction (no customer or terminal)",
                                   "disposition")
                    continue
                applied += 1
            self.counts.dispositions += applied
            self.metrics.dispositions.labels(self.metrics.job).inc(applied)

    def _expire_labels(self, po: PartitionOut, owned: OwnedPartition) -> None:
        """Labels that waited too long for their transaction -> dead letters at the label's own
        position. Written also when the expiry happens during a replay: the label's position may be
        in the store while its expiry was not (a crash in between); the row is keyed on the position,
        so writing it again is a no-op."""
        for e in owned.state.expire_pending():
            if not (isinstance(e.ref, str) and e.ref.count(":") >= 2):
                continue
            topic, part, offset = e.ref.rsplit(":", 2)
            payload = json.dumps({"transaction_id": e.transaction_id, "is_fraud": e.is_fraud}).encode()
            why = ("no transaction with this id within the pending horizon" if e.reason == "horizon"
                   else "too many labels waiting for unseen transactions")
            self._dead(po, _Position(topic, int(part), int(offset), payload),
                       f"label for an unknown transaction: {why}", "label_horizon")

    def _place_labels(self, owned: OwnedPartition, labels: list[tuple[Label, Any]]) -> None:
        """Through the state's index; ids it lost are looked up in the store (`locate`), the rest wait in
        `pending` from the label's own report time on (a label read ahead of its transactions waits for them)."""
        import numpy as np

        def locate(ids: list[str]):
            where = self.runtime.retry("label lookup", lambda: self.store.score_locations(ids))
            return [where[i] if i in where and where[i][2] is not None else None for i in ids]

        owned.state.apply_label_columns([lb.transaction_id for lb, _ in labels],
                                        np.array([lb.is_fraud for lb, _ in labels], bool),
                                        [position(r) for _, r in labels], park=True, locate=locate,
                                        not_before=[lb.reported_at for lb, _ in labels])

    def decode(self, po: PartitionOut | None, records: list[Any]) -> list[Item]:
        items = []
        limit = self.settings.kafka.max_message_bytes
        for r in records:
            try:
                items.append(Item(r, decode(Transaction, r.value, limit)))
            except ContractError as exc:
                if po is not None:
                    self._dead(po, r, exc.reason, "decode")
        return items

    def validate_input(self, po: "PartitionOut | Callable[[Item], PartitionOut] | None", items: list[Item]) -> list[Item]:
        if not items:
            return []
        plain = [{"transaction_id": it.tx.transaction_id, "customer_id": it.tx.customer_id,
                  "terminal_id": it.tx.terminal_id, "amount": it.tx.amount, "timestamp": it.tx.timestamp, "_i": i}
                 for i, it in enumerate(items)]
        bad = self._row_failures(plain, lambda rows: validate_transactions(
            rows, max_amount=self.config.max_amount, engine=self.config.validation_engine))
        if not bad:
            return items
        good = []
        for i, it in enumerate(items):
            if i in bad:
                if po is not None:
                    self._dead(_out_of(po, it), it.record, bad[i], "validate_input")
            else:
                good.append(it)
        return good

    @staticmethod
    def _row_failures(rows: list[dict[str, Any]], check: Callable) -> dict[int, str]:
        """{row index: reason} from a batch check; if the check itself raises, row by row (a row that
        raises on its own fails with the exception's type)."""
        try:
            result = check(rows)
            return {row["_i"]: reason for row, reason in result.failures}
        except Exception:  # noqa: BLE001 - one hostile row must not fail the batch
            log.warning("batch check raised; checking row by row", exc_info=True)
        bad = {}
        for row in rows:
            try:
                result = check([row])
                bad.update({r["_i"]: reason for r, reason in result.failures})
            except Exception as exc:  # noqa: BLE001
                bad[row["_i"]] = f"check failed: {type(exc).__name__}"
        return bad

    def deduplicate(self, po: "PartitionOut | Callable[[Item], PartitionOut] | None", items: list[Item]) -> list[Item]:
        """Drop same-payload duplicates, dead-letter other-payload ones; replays of our own writes pass."""
        if not items:
            return []
        stored = self.runtime.retry("dedup lookup",
                                    lambda: self.store.score_provenance(it.tx.transaction_id for it in items))
        seen: dict[str, tuple[str, str]] = {}
        out = []
        for it in items:
            it.hash, pos = payload_hash(it.tx), position(it.record)
            prior = seen.get(it.tx.transaction_id) or stored.get(it.tx.transaction_id)
            if prior is not None and prior[0] is not None and prior[1] != pos:
                if po is None:
                    continue
                if prior[0] == it.hash:
                    self.counts.duplicates += 1
                    self.metrics.duplicates.labels(self.metrics.job).inc()
                else:
                    self._dead(_out_of(po, it), it.record, "duplicate transaction_id with a different payload "
                                                           f"(first seen at {prior[1]})", "deduplicate")
                continue
            seen[it.tx.transaction_id] = (it.hash, pos)
            out.append(it)
        return out

    def rebuild(self, owned: OwnedPartition, records: list[Any]) -> None:
        """Records already in the store: the same steps, so the state advances exactly as it did; no output."""
        items = self.deduplicate(None, self.validate_input(None, self.decode(None, records)))
        self._advance(None, owned, items)
        self.counts.rebuilt += len(records)

    def score_live(self, po: PartitionOut, owned: OwnedPartition, items: list[Item]) -> list[Item]:
        """Admitted items of one partition: the state takes them in, then one scorer call; the scored items."""
        advanced = [(po, it, ctx) for it, ctx in self._advance(po, owned, items)]
        self.score(advanced)
        return [it for _, it, _ in advanced if it.score is not None]

    def _advance(self, po: PartitionOut | None, owned: OwnedPartition, items: list[Item]) -> list[tuple[Item, Any]]:
        """The state reads each item's context and takes it in; (item, context) pairs. A record the
        state cannot take is dead-lettered (stage `state`)."""
        if not items:
            return []
        try:
            ctx = owned.state.advance_batch([it.tx for it in items])
            return [(it, (ctx, i)) for i, it in enumerate(items)]
        except Exception:  # noqa: BLE001 - isolate the record: one by one
            log.warning("state update raised; advancing one by one", extra={"consumer": self.name}, exc_info=True)
        out = []
        for it in items:
            try:
                out.append((it, (owned.state.advance_batch([it.tx]), 0)))
            except Exception as exc:  # noqa: BLE001
                if po is not None:
                    self._dead(po, it.record, f"state update failed: {type(exc).__name__}", "state")
        return out

    def score(self, advanced: list[tuple[PartitionOut, Item, Any]]) -> None:
        """One scorer call over the contexts read (of any partitions); a failing call is bisected to
        the record, which goes to its partition's dead letters (stage `score`)."""
        import numpy as np

        from models.fraud_state import FraudContext

        if not advanced:
            return
        c = self.config
        scorer = self.scorer
        version = getattr(scorer, "model_version", None)
        groups: dict[int, tuple[Any, list[tuple[PartitionOut, Item, int]]]] = {}
        for po, it, (ctx, i) in advanced:
            groups.setdefault(id(ctx), (ctx, []))[1].append((po, it, i))
        parts, members = [], []
        for ctx, ms in groups.values():
            idx = np.fromiter((i for _, _, i in ms), np.int64, len(ms))
            whole = len(idx) == len(ctx) and bool((idx == np.arange(len(idx))).all())
            parts.append(ctx if whole else ctx.take(idx))
            members.extend(ms)
        every = parts[0] if len(parts) == 1 else FraudContext.concat(parts)

        def run(rows: np.ndarray) -> None:
            try:
                sub = every if len(rows) == len(every) else every.take(rows)
                probs, decisions, reasons = scorer.score_columns(sub, c.alert_threshold, c.review_threshold,
                                                                 explain_top_k=c.explain_top_k)
                scored_at = datetime.now(timezone.utc)
                for k, (r, p, d) in enumerate(zip(rows.tolist(), probs, decisions, strict=True)):
                    it = members[r][1]
                    it.score, it.decision, it.reasons = p, d, reasons.get(k, [])
                    it.model_version, it.scored_at = version, scored_at
            except Exception as exc:  # noqa: BLE001
                if len(rows) == 1:
                    po, it, _ = members[int(rows[0])]
                    self._dead(po, it.record, f"scoring failed: {type(exc).__name__}", "score")
                    return
                half = len(rows) // 2
                run(rows[:half])
                run(rows[half:])

        run(np.arange(len(members)))

    def validate_output(self, scored: list[tuple[PartitionOut, Item]]) -> None:
        """One check over the batch's scores; each row goes to its partition's output or dead letters."""
        if not scored:
            return
        c = self.config
        plain = [{"transaction_id": it.tx.transaction_id, "model_version": it.model_version, "score": it.score,
                  "decision": it.decision, "_i": i} for i, (_, it) in enumerate(scored)]
        bad = self._row_failures(plain, lambda rows: validate_scores(
            rows, alert_threshold=c.alert_threshold, review_threshold=c.review_threshold, engine=c.validation_engine))
        # the labelled child once per batch: labels() per row was ~10% of the job's CPU (py-spy)
        score_histogram = self.metrics.scores.labels(self.metrics.job)
        for i, (po, it) in enumerate(scored):
            if i in bad:
                self._dead(po, it.record, bad[i], "validate_output")
                continue
            tx = it.tx
            # the fraud_scores row, built directly (no FraudScore / Reason objects on the stream's path)
            row = {"transaction_id": tx.transaction_id, "score": float(it.score), "decision": it.decision,
                   "reasons": it.reasons, "model_version": it.model_version, "scored_at": it.scored_at,
                   "customer_id": tx.customer_id, "terminal_id": tx.terminal_id, "timestamp": tx.timestamp,
                   "amount": tx.amount, "payload_hash": it.hash, "source_position": position(it.record)}
            po.score_rows.append(row)
            po.keys[tx.transaction_id] = tx.customer_id
            score_histogram.observe(it.score)
            if it.score >= c.alert_threshold:
                po.alerts.append(row)

    def _dead(self, po: PartitionOut, record: Any, reason: str, stage: str) -> None:
        po.dead_letters.append((DeadLetter(source=record.topic, reason=reason, stage=stage, payload=record.value,
                                           partition=record.partition, offset=record.offset), record))
        self.metrics.dead_letters.labels(self.metrics.job, stage, reason_kind(reason)).inc()
        log.warning("dead letter", extra={"consumer": self.name, "stage": stage, "reason": reason[:200],
                                          "position": position(record)})

    def _pick_snapshot(self, out: Output, live: set[int]) -> None:
        """At most one partition per batch: the stalest that is due (older than snapshot_interval_s
        and snapshot_min_records behind) among those this batch moves. It is written with the batch
        (its positions are checked in the same transaction), at the batch's end."""
        c, now = self.config, time.monotonic()
        due = [p for p in live if (o := self.owned.get(p)) is not None and o.tx_next is not None
               and now - o.snap_time >= c.snapshot_interval_s and o.tx_next - o.snap_tx >= c.snapshot_min_records]
        if not due:
            return
        p = min(due, key=lambda q: self.owned[q].snap_time)
        owned = self.owned[p]
        out.part(p).snapshot = (owned.tx_next, owned.labels_next, owned.dispositions_next, owned.state.snapshot())
        owned.snap_time, owned.snap_tx = now, owned.tx_next

    # -- side effects (called by the runtime, inside its retry) -------------------------------------

    def write(self, out: Output, also: list[Callable]) -> None:
        """Scores + alerts + dead letters + positions (+ snapshots) in ONE store transaction. If the
        database refuses some row itself (StoreRejected), that row is found and dead-lettered instead
        (`_isolate`), and the batch is written."""
        snaps = [self.snapshots.save_step(p, *po.snapshot, getattr(self.scorer, "model_version", None))
                 for p, po in out.parts.items() if po.snapshot is not None]
        try:
            self.store.write_batch(scores=out.score_rows, alerts=out.alerts,
                                   dead_letters=[d for d, _ in out.dead_letters], also=[*also, *snaps])
        except StoreRejected:
            log.error("the store refused part of a batch; isolating the rows", extra={"consumer": self.name})
            self._isolate(out)
            self.store.write_batch(scores=out.score_rows, alerts=out.alerts,
                                   dead_letters=[d for d, _ in out.dead_letters], also=[*also, *snaps])
        rows = len(out.score_rows)
        self.metrics.scored.labels(self.metrics.job).inc(rows)
        self.counts.scored += rows
        self.counts.dead_letters += len(out.dead_letters)
        self.counts.snapshots += len(snaps)
        if snaps:
            self.metrics.snapshots.labels(self.metrics.job).inc(len(snaps))

    def _isolate(self, out: Output) -> None:
        """Find the rows the database refuses (each tried alone, in a transaction rolled back) and
        replace them: a refused score becomes a dead letter (stage `store`), a refused dead letter a
        minimal one (no payload, an ASCII reason). Error path only."""
        refused = self.store.refuses
        for po in out.parts.values():
            keep_scores = []
            bad_ids = set()
            for row in po.score_rows:
                if refused(scores=[row]):
                    bad_ids.add(row["transaction_id"])
            for row in po.score_rows:
                if row["transaction_id"] in bad_ids:
                    pos = row["source_position"].rsplit(":", 2)
                    record = _Position(pos[0], int(pos[1]), int(pos[2]), b"")
                    po.dead_letters.append((DeadLetter(source=record.topic, reason="the store refused the score row",
                                                       stage="store", partition=record.partition,
                                                       offset=record.offset), record))
                else:
                    keep_scores.append(row)
            keep_alerts = [a for a in po.alerts if a["transaction_id"] not in bad_ids]
            po.score_rows, po.alerts = keep_scores, keep_alerts
            fixed = []
            for d, r in po.dead_letters:
                if refused(dead_letters=[d]):
                    safe = d.reason.encode("ascii", "backslashreplace").decode()[:1000]
                    d = DeadLetter(source=d.source, reason=safe, stage=d.stage, payload=None,
                                   partition=d.partition, offset=d.offset)
                fixed.append((d, r))
            po.dead_letters = fixed

    def drop(self, out: Output, tps: set[TopicPartition]) -> Output:
        gone = {tp.partition for tp in tps}
        return Output({p: po for p, po in out.parts.items() if p not in gone})

    def publish(self, out: Output) -> None:
        """Alerts to the alerts topic and dead letters to the dead-letter topic, flushed; a failure
        starts a fresh producer and the runtime re-sends the whole batch (at-least-once)."""
        alerts, letters = out.alerts, out.dead_letters
        if not (alerts or letters):
            return
        c = self.config
        try:
            sent = []
            for po in out.parts.values():
                for row in po.alerts:
                    alert = {"transaction_id": row["transaction_id"], "score": row["score"], "decision": row["decision"],
                             "reasons": row["reasons"], "model_version": row["model_version"],
                             "scored_at": row["scored_at"].isoformat(), "timestamp": row["timestamp"].isoformat(),
                             "amount": row["amount"]}
                    sent.append(self.producer.send(c.alerts_topic, alert, key=po.keys.get(row["transaction_id"])))
            for d, r in letters:
                sent.append(self.dead_letter_out.publish_record(r, f"{d.stage}: {d.reason}"))
            self.producer.flush(timeout=10)
            for future in sent:  # flush() returns even when batches were aborted: check each send
                future.get(timeout=0)
        except Exception:
            self._new_producer()
            raise
        self.counts.alerts += len(alerts)
        self.metrics.alerts.labels(self.metrics.job).inc(len(alerts))

    def _new_producer(self) -> None:
        # a producer can be left in a fatal state (e.g. its producer id unknown to a restarted broker)
        try:
            self.producer.close(0)
        except Exception:  # noqa: BLE001
            pass
        self.producer = make_producer(self.settings, linger_ms=2)
        self.dead_letter_out = DeadLetterPublisher(self.settings, producer=self.producer,
                                                   topic=self.config.dead_letter_topic)


# --- running without Ray (tests of the core, the benchmark's in-process mode) ---------------------

def load_scorer(checkpoint: str | None = None, threads: int | None = None) -> Any:
    """The stream's scorer, one torch thread by default; also keeps freed memory in this process
    (`pipelines.allocator`: the forward's activations were ~25% of its CPU in page faults)."""
    from models.fraud_scorer import FraudScorer, default_threads
    from pipelines.allocator import keep_freed_memory

    keep_freed_memory()
    return FraudScorer.load(checkpoint, threads=threads or default_threads())


def follow_registry(settings: Settings, store: Store, scorer: Any, checkpoint: str | None, name: str) -> ModelHolder | None:
    """A holder following the registry's champion, unless a checkpoint is pinned or polling is off."""
    if checkpoint is not None or settings.model.registry_poll_s <= 0:
        return None
    return ModelHolder(store, scorer, settings.model.registry_poll_s, name=name)


def build_job(settings: Settings, store_url: str, checkpoint: str | None = None, name: str = "fraud-0",
              metrics_port: int | None = None, **config_overrides: Any) -> FraudStreamJob:
    store = Store.from_url(store_url)
    config = StreamConfig.from_settings(settings, **config_overrides)
    metrics = StreamMetrics()
    if metrics_port:
        metrics.serve(metrics_port, settings.metrics.host)
    scorer = load_scorer(checkpoint)
    return FraudStreamJob(settings, store, scorer, config, metrics, name=name,
                          models=follow_registry(settings, store, scorer, checkpoint, name))
