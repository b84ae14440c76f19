"""The fraud stream job against the real tansu broker and real PostgreSQL / SQLite (no Ray here:
`test_fraud_stream_ray.py` runs the same job in Ray actors and SIGKILLs them).

Every test proves its claim by COUNTING rows and records, not by trusting the job's own counters.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.request
from collections import defaultdict

import numpy as np
import pytest
from sqlalchemy import text

from pipelines.contracts import Label
from pipelines.errors import StoreError
from pipelines.fraud_stream import FraudStreamJob, JsonLogFormatter, StreamConfig, load_scorer
from pipelines.kafka_io import count_records, make_consumer
from pipelines.metrics import StreamMetrics
from pipelines.store import Store
from tests.stream_fixtures import accepted_extras, bad_records, produce, transactions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scorer():
    return load_scorer(None, threads=1)  # the shipped checkpoint, or tiny random weights when absent


def topics(broker, partitions: int = 4) -> dict[str, str]:
    return {"transactions_topic": broker.new_topic("tx", partitions), "labels_topic": broker.new_topic("lb", partitions),
            "dispositions_topic": broker.new_topic("ds", partitions),
            "alerts_topic": broker.new_topic("alerts", 1), "dead_letter_topic": broker.new_topic("dlq", 1)}


def make_job(broker, store_url, scorer, names, group, metrics=None, **overrides) -> FraudStreamJob:
    config = StreamConfig.from_settings(broker.settings, group=group, **names, **{"max_batch": 256, **overrides})
    return FraudStreamJob(broker.settings, Store.from_url(store_url), scorer, config, metrics or StreamMetrics(),
                          name=group)


def rows(store_url) -> dict[str, tuple]:
    with Store.from_url(store_url) as s, s.engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(text(
            "SELECT transaction_id, score, decision, amount FROM fraud_scores"))}


def assert_counts(store_url: str, valid_ids: set[str], dead: int, threshold: float) -> None:
    with Store.from_url(store_url) as s, s.engine.connect() as conn:
        n, distinct = conn.execute(text("SELECT count(*), count(DISTINCT transaction_id) FROM fraud_scores")).one()
        ids = set(conn.execute(text("SELECT transaction_id FROM fraud_scores")).scalars())
        n_dead = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
        high = conn.execute(text("SELECT count(*) FROM fraud_scores WHERE score >= :t"), {"t": threshold}).scalar_one()
        n_alerts = conn.execute(text("SELECT count(*) FROM alerts")).scalar_one()
        orphan = conn.execute(text("SELECT count(*) FROM alerts a LEFT JOIN fraud_scores f USING (transaction_id) "
                                   "WHERE f.transaction_id IS NULL OR f.score < :t"), {"t": threshold}).scalar_one()
        bad = conn.execute(text("SELECT a.transaction_id, a.score, f.score FROM alerts a LEFT JOIN fraud_scores f "
                                "USING (transaction_id) WHERE f.transaction_id IS NULL OR f.score < :t"), {"t": threshold}).all()
    assert n == distinct == len(valid_ids), (n, distinct, len(valid_ids))
    assert ids == valid_ids
    assert n_dead == dead
    assert n_alerts == high and orphan == 0, bad


def reference_scores(broker, scorer, topic: str, batch: int = 256) -> dict[str, float]:
    """What an uninterrupted stream gives: each partition's valid records in offset order through a
    fresh state (first occurrence of an id wins, as in the job)."""
    from kafka import TopicPartition

    from pipelines.contracts import ContractError, Transaction, decode

    consumer = make_consumer(broker.settings, None, None, consumer_timeout_ms=3000)
    parts = defaultdict(list)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for r in consumer:
            parts[r.partition].append(r)
    finally:
        consumer.close()
    out: dict[str, float] = {}
    for p, recs in parts.items():
        state = scorer.new_state()
        txs = []
        for r in sorted(recs, key=lambda r: r.offset):
            try:
                tx = decode(Transaction, r.value)
            except ContractError:
                continue
            if tx.transaction_id not in out and tx.amount <= 1_000_000 and tx.transaction_id not in {t.transaction_id for t in txs}:
                txs.append(tx)
        for s in range(0, len(txs), batch):
            for sc in scorer.score(txs[s:s + batch], state, explain_top_k=0):
                out[sc.transaction_id] = sc.score
    return out


def test_bad_input_each_has_its_outcome_and_counts_add_up(kafka_broker, pg_url, scorer):
    """2,000 valid transactions + each kind of bad record: every valid one scored exactly once, each
    bad one dead-lettered (table AND topic) with a reason naming the problem, alerts == high scores,
    the metrics endpoint shows it, and the JSON logs carry no raw ids."""
    names = topics(kafka_broker)
    valid = transactions(2000, seed=1, prefix="bi")
    bad = bad_records(valid)
    extras = accepted_extras(valid)
    produce(kafka_broker.settings, names["transactions_topic"], valid)
    produce(kafka_broker.settings, names["transactions_topic"], [r for v in bad.values() for r in v])
    produce(kafka_broker.settings, names["transactions_topic"], extras)

    from tests.fixtures.ray_local import free_port

    port = free_port()
    metrics = StreamMetrics()
    metrics.serve(port)
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(JsonLogFormatter())
    logging.getLogger("argus").addHandler(handler)
    try:
        job = make_job(kafka_broker, pg_url, scorer, names, "g-bad-input", metrics)
        counts = job.run(seconds=120, idle_exit_s=2.0)
    finally:
        logging.getLogger("argus").removeHandler(handler)

    dead_expected = sum(len(bad[k]) for k in ("malformed_json", "schema", "absurd_amount", "duplicate_other_payload"))
    valid_ids = {t.transaction_id for t in valid + extras}
    assert_counts(pg_url, valid_ids, dead_expected, job.config.alert_threshold)
    assert counts.duplicates == 1  # the same-payload duplicate: skipped, not rescored

    with Store.from_url(pg_url) as s:
        letters = [r for r in s.dead_letter_rows(limit=100) if r["source"] == names["transactions_topic"]]
    by_stage = defaultdict(list)
    for r in letters:
        by_stage[r["stage"]].append(r["reason"])
    assert len(by_stage["decode"]) == 5 and sum("malformed json" in r for r in by_stage["decode"]) == 2
    assert any("amount: Input should be greater than or equal to 0" in r for r in by_stage["decode"])
    assert any("customer_id: Field required" in r for r in by_stage["decode"])
    assert any("surprise: Extra inputs are not permitted" in r for r in by_stage["decode"])
    assert by_stage["validate_input"] and "expect_column_values_to_be_between(amount)" in by_stage["validate_input"][0]
    assert by_stage["deduplicate"] and "different payload" in by_stage["deduplicate"][0]
    # the first payload of the conflicting id is the one kept
    kept = rows(pg_url)[valid[6].transaction_id]
    assert kept[2] == pytest.approx(valid[6].amount)
    # out-of-order and unknown customer/terminal: accepted and scored
    assert {"late-1", "unknown-1"} <= set(rows(pg_url))

    assert count_records(kafka_broker.settings, names["dead_letter_topic"], idle_timeout_s=2, expect=dead_expected) == dead_expected
    with Store.from_url(pg_url) as s:
        n_alerts = s.count("alerts")
    assert count_records(kafka_broker.settings, names["alerts_topic"], idle_timeout_s=2, expect=n_alerts) == n_alerts

    scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'argus_stream_dead_letters_total{job="fraud",reason="malformed_json",stage="decode"} 2.0' in scrape
    assert "argus_stream_consumer_lag" in scrape and "argus_stream_batch_seconds_bucket" in scrape
    assert "argus_fraud_stream_score_bucket" in scrape and "argus_stream_alerts_total" in scrape

    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert any(line["msg"] == "dead letter" for line in lines)
    text_logs = logs.getvalue()
    assert not any(t.customer_id in text_logs or t.transaction_id in text_logs for t in valid[:50] + extras)


class Crash(BaseException):
    """Stands for a SIGKILL between the store write and the offset commit."""


def test_crash_after_write_before_commit_then_restart_equals_uninterrupted(kafka_broker, sqlite_url, scorer):
    """A consumer dies after writing a batch but before publishing and committing it, with its
    partitions' state snapshots older than the stored positions. The restarted consumer claims the
    partitions, restores the snapshots, replays the records up to the STORED positions into the state
    only, writes nothing twice, and every score equals the score of an uninterrupted run."""
    names = topics(kafka_broker)
    valid = transactions(1500, seed=2, prefix="rs")
    produce(kafka_broker.settings, names["transactions_topic"], valid)

    # a partition is snapshotted once it is 120 records past its last snapshot: by the 7th batch
    # (~175 records a partition) every snapshot is behind the stored position, so a restore replays
    job = make_job(kafka_broker, sqlite_url, scorer, names, "g-crash", max_batch=100, snapshot_interval_s=0.0,
                   snapshot_min_records=120)
    real_commit = job.runtime.commit
    calls = {"n": 0}

    def crashing_commit(batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise Crash()
        real_commit(batch)

    job.runtime.commit = crashing_commit
    # a dead process neither snapshots on its way out nor flushes more
    job.close = lambda: None
    with pytest.raises(Crash):
        job.run(seconds=120)
    written = Store.from_url(sqlite_url).count("fraud_scores")
    assert 0 < written < len(valid)

    job2 = make_job(kafka_broker, sqlite_url, scorer, names, "g-crash", max_batch=100)
    counts = job2.run(seconds=120, idle_exit_s=2.0)
    assert counts.rebuilt > 0  # the state was rebuilt from the records between snapshot and stored position
    assert_counts(sqlite_url, {t.transaction_id for t in valid}, 0, job2.config.alert_threshold)

    reference = reference_scores(kafka_broker, scorer, names["transactions_topic"])
    got = rows(sqlite_url)
    assert set(reference) == set(got)
    diff = max(abs(reference[k] - got[k][0]) for k in reference)
    assert diff < 1e-4, diff


class FlakyStore:
    """A real Store whose write_batch fails `failures` times (an outage), recording what the job did meanwhile."""

    def __init__(self, store: Store, failures: int):
        self._store, self.failures, self.seen = store, failures, []
        self.job: FraudStreamJob | None = None

    def __getattr__(self, name):
        return getattr(self._store, name)

    def write_batch(self, **kw):
        if self.failures > 0:
            self.failures -= 1
            from pipelines.stream_positions import positions

            job = self.job
            self.seen.append({"paused": bool(job.consumer.paused()),
                              "committed": positions(self._store, job.config.group),
                              "lag": sum(s.value for m in job.metrics.lag.collect() for s in m.samples)})
            raise StoreError("store write failed at postgresql://...: connection refused (simulated outage)")
        return self._store.write_batch(**kw)


def test_store_outage_pauses_consumption_retries_and_commits_only_after_write(kafka_broker, fresh_pg_url, scorer):
    """While the store is down the consumer pauses (nothing new fetched: one batch in memory), the lag
    stays visible, no offset is committed; after the outage every transaction is written once."""
    names = topics(kafka_broker)
    valid = transactions(1200, seed=3, prefix="so")
    produce(kafka_broker.settings, names["transactions_topic"], valid)
    config = StreamConfig.from_settings(kafka_broker.settings, group="g-outage", max_batch=200, retry_initial_s=0.2,
                                        retry_max_s=0.8, **names)
    flaky = FlakyStore(Store.from_url(fresh_pg_url), failures=5)
    job = FraudStreamJob(kafka_broker.settings, flaky, scorer, config, StreamMetrics(), name="g-outage")
    flaky.job = job
    counts = job.run(seconds=120, idle_exit_s=2.0)

    assert counts.store_retries == 5
    assert all(s["committed"] == flaky.seen[0]["committed"] for s in flaky.seen)  # nothing committed during the outage
    assert all(s["paused"] for s in flaky.seen[1:])  # paused from the first failure on
    assert flaky.seen[-1]["lag"] > 0
    assert_counts(fresh_pg_url, {t.transaction_id for t in valid}, 0, config.alert_threshold)


def test_late_labels_update_the_partition_risk_state(kafka_broker, fresh_pg_url, scorer):
    """Chargebacks on the labels topic (keyed by customer, like transactions) reach the state of the
    partition that owns the customer; after the label delay, later transactions at the same terminal
    see the known fraud in their context."""
    names = topics(kafka_broker, partitions=2)
    valid = transactions(400, customers=10, terminals=12, seed=4, prefix="lb")
    produce(kafka_broker.settings, names["transactions_topic"], valid)
    frauds = valid[:40:4]
    labels = [Label(transaction_id=t.transaction_id, is_fraud=True, reported_at=t.timestamp, customer_id=t.customer_id,
                    terminal_id=t.terminal_id) for t in frauds]
    produce(kafka_broker.settings, names["labels_topic"], labels)
    job = make_job(kafka_broker, fresh_pg_url, scorer, names, "g-labels", snapshot_interval_s=3600)
    job.close = lambda: None  # keep the states to inspect them
    counts = job.run(seconds=120, idle_exit_s=2.0)
    assert counts.labels == len(labels)
    from models.fraud_state import CURRENT_FIELDS

    known = CURRENT_FIELDS.index("customer_known_frauds")
    later = frauds[0].model_copy(update={"transaction_id": "probe", "timestamp": frauds[0].timestamp
                                         + __import__("datetime").timedelta(days=8)})
    owners = [p for p, st in job.states.items() if later.customer_id in st.customers.index]
    assert len(owners) == 1  # the customer's state lives in exactly one partition
    ctx = job.states[owners[0]].context_batch([later])
    assert ctx.cur_num[0, known] > 0
    job.consumer.close(autocommit=False)
    job.producer.close(1)


def test_broker_restart_loses_nothing_and_writes_nothing_twice(tmp_path, fresh_pg_url, scorer, monkeypatch):
    """tansu keeps data in memory, so a broker restart loses the topics and the group's offsets. What
    this proves: with an at-least-once producer that re-sends what it produced after the restart, the
    running consumer rides through the outage (retries, rejoins the group on the new broker) and the
    store ends with each transaction exactly once - idempotent upserts keyed on transaction_id plus the
    provenance check absorb the re-read records. It does NOT prove that records only on the old
    broker survive: they would not (memory storage); Apache Kafka's replicated log covers that."""
    from infra.local_broker import free_port, start, stop
    from pipelines.kafka_io import create_topics, with_bootstrap
    from pipelines.settings import Settings

    port, state_dir = free_port(), tmp_path / "broker"
    settings = Settings()
    broker = start(settings, port=port, partitions=2, state_dir=state_dir)
    s = with_bootstrap(settings, broker.bootstrap)
    names = {"transactions_topic": "rb.tx", "labels_topic": "rb.lb", "alerts_topic": "rb.alerts",
             "dead_letter_topic": "rb.dlq"}
    create_topics(broker.bootstrap, list(names.values()), 2)
    valid = transactions(1200, seed=5, prefix="rb")
    produce(s, names["transactions_topic"], valid[:600])
    config = StreamConfig.from_settings(s, group="g-restart", max_batch=200, retry_initial_s=0.2, retry_max_s=1.0, **names)
    job = FraudStreamJob(s, Store.from_url(fresh_pg_url), scorer, config, StreamMetrics(), name="g-restart")
    done: dict = {}
    thread = threading.Thread(target=lambda: done.setdefault("counts", job.run(seconds=150)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while Store.from_url(fresh_pg_url).count("fraud_scores") < 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop(settings, state_dir=state_dir)
        time.sleep(1.0)
        # the old listener's sockets sit in TIME_WAIT; tansu binds with SO_REUSEADDR, the pre-check does not
        monkeypatch.setattr("infra.local_broker._check_port_free", lambda host, port: None)
        broker = start(settings, port=port, partitions=2, state_dir=state_dir)
        create_topics(broker.bootstrap, list(names.values()), 2)
        produce(s, names["transactions_topic"], valid)  # the producer re-sends everything it sent, then the rest
        deadline = time.monotonic() + 90
        while Store.from_url(fresh_pg_url).count("fraud_scores") < len(valid) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3.0)  # time to write anything extra, if it were going to
        job.stop()
        thread.join(timeout=30)
    finally:
        job.stop()
        thread.join(timeout=30)
        stop(settings, state_dir=state_dir)
    assert "counts" in done
    assert_counts(fresh_pg_url, {t.transaction_id for t in valid}, 0, config.alert_threshold)


def test_periodic_snapshots_take_one_due_partition_per_batch():
    """Unit (no broker): a batch snapshots the stalest due partition among those it moves, skips
    partitions that advanced fewer than snapshot_min_records, and takes the state at the batch's end."""
    from types import SimpleNamespace

    from pipelines.fraud_stream import OwnedPartition, Output

    class State:
        def __init__(self, tag):
            self.tag = tag

        def snapshot(self):
            return self.tag.encode()

    now = time.monotonic()
    owned = {0: OwnedPartition(State("s0"), 500, None, snap_time=now - 20, snap_tx=0),
             1: OwnedPartition(State("s1"), 500, 7, snap_time=now - 30, snap_tx=0),
             2: OwnedPartition(State("s2"), 50, None, snap_time=now - 60, snap_tx=0),  # only 50 records since
             3: OwnedPartition(State("s3"), 900, None, snap_time=now - 90, snap_tx=0)}  # not in this batch
    job = SimpleNamespace(config=StreamConfig(snapshot_interval_s=10.0, snapshot_min_records=100), owned=owned)
    taken = []
    for _ in range(3):
        out = Output()
        FraudStreamJob._pick_snapshot(job, out, {0, 1, 2})
        taken += [(p, po.snapshot) for p, po in out.parts.items() if po.snapshot]
    assert taken == [(1, (500, 7, None, b"s1")), (0, (500, None, None, b"s0"))]  # stalest first, one per batch, then none due


def test_a_row_the_database_refuses_is_dead_lettered_and_the_batch_is_written(kafka_broker, fresh_pg_url, scorer):
    """A permanent refusal (SQLSTATE class 22: a value too long for its column) is not retried forever:
    the job tries each row alone, dead-letters the refused one (stage `store`), writes the rest and
    the positions in one transaction."""
    from pipelines.fraud_stream import Output, _Position
    from pipelines.store import DeadLetter
    from pipelines.stream_positions import Advance, advance, claim, positions

    names = topics(kafka_broker)
    job = make_job(kafka_broker, fresh_pg_url, scorer, names, "g-refused")
    tx = names["transactions_topic"]
    epoch = claim(job.store, "g-refused", [(tx, 0)], "t")[(tx, 0)].epoch
    good = {"transaction_id": "ok-1", "score": 0.9, "decision": "decline", "reasons": [], "model_version": "m",
            "customer_id": "c", "terminal_id": "t", "source_position": f"{tx}:0:0"}
    bad = {**good, "transaction_id": "too-long", "customer_id": "c" * 300, "source_position": f"{tx}:0:1"}
    out = Output()
    po = out.part(0)
    po.score_rows, po.alerts = [good, bad], [good, bad]
    po.dead_letters = [(DeadLetter(source=tx, reason="bad \x00 reason", stage="decode", payload=b"\x00",
                                   partition=0, offset=2), _Position(tx, 0, 2, b"\x00"))]
    job.write(out, [advance("g-refused", [Advance(tx, 0, epoch, 0, 3)])])
    with Store.from_url(fresh_pg_url) as s:
        assert s.get_result("ok-1") is not None and s.get_result("too-long") is None
        assert s.count("alerts") == 1
        stages = sorted(r["stage"] for r in s.dead_letter_rows())
        assert stages == ["decode", "store"]
        assert positions(s, "g-refused")[(tx, 0)] == 3
    job.runtime.close()


# --- investigators' dispositions --------------------------------------------------------------------

def _until(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _stored_partition(url: str, topic: str) -> dict[int, list[tuple[int, str, float]]]:
    """{partition: [(offset, transaction_id, score), ...] in offset order} from fraud_scores."""
    out: dict[int, list] = defaultdict(list)
    with Store.from_url(url) as s, s.engine.connect() as conn:
        for tid, score, pos in conn.execute(text("SELECT transaction_id, score, source_position FROM fraud_scores")):
            t, p, o = pos.rsplit(":", 2)
            assert t == topic
            out[int(p)].append((int(o), tid, score))
    return {p: sorted(v) for p, v in out.items()}


def test_a_disposition_reaches_the_next_score_and_survives_crashes_and_old_snapshots(kafka_broker, fresh_pg_url):
    """An analyst's verdict produced on the dispositions topic while the stream runs changes the review
    fields and the score of the customer's next transaction: every stored score equals an offline
    replay of the partition with the verdict known from its `disposed_at` (and the probes' differ from
    a replay without it). Hostile dispositions are dead-lettered and the job goes on. A crash after a
    snapshot that carries the dispositions offset, and a restore from an old snapshot without one
    (read again from the start), keep the verdict counted once and write no dead letter twice."""
    from datetime import timedelta

    from models.fraud_reviews import REVIEW_FIELDS
    from models.fraud_scorer import FraudScorer
    from pipelines.contracts import Disposition
    from pipelines.fraud_state_store import PartitionStateStore
    from tests.test_fraud_reviews import tiny_review_model

    scorer = FraudScorer(tiny_review_model(), "tiny-review")
    names = topics(kafka_broker, partitions=2)
    tx_topic, ds_topic = names["transactions_topic"], names["dispositions_topic"]
    valid = transactions(160, customers=6, terminals=10, seed=9, prefix="dp")
    by_id = {t.transaction_id: t for t in valid}
    target = valid[100]
    cust = target.customer_id
    decided = valid[119].timestamp + timedelta(minutes=1)
    verdict = Disposition(transaction_id=target.transaction_id, disposition="fraud", disposed_by="ana",
                          disposed_at=decided, customer_id=cust, terminal_id=target.terminal_id)
    good = json.loads(verdict.to_json())
    hostile = [b"{not json", json.dumps({**good, "disposition": "maybe"}).encode(),
               json.dumps({k: v for k, v in good.items() if k != "disposed_at"}).encode(),
               json.dumps(good).encode().replace(json.dumps(good["disposed_at"]).encode(), b"NaN"),
               b'{"transaction_id":' + b"[" * 5000 + b"]" * 5000 + b"}",
               json.dumps({**good, "transaction_id": "never-seen", "customer_id": None, "terminal_id": None}).encode()]
    probes = [target.model_copy(update={"transaction_id": f"probe-{i}", "timestamp": decided + timedelta(hours=i + 1)})
              for i in range(3)]
    by_id.update({t.transaction_id: t for t in probes})

    # a consumer that dies stays in the group until its session ends and the group's rebalance waits for it:
    # short timeouts keep the three restarts quick (a batch here takes milliseconds)
    quick = kafka_broker.settings.model_copy(update={"kafka": kafka_broker.settings.kafka.model_copy(update=dict(
        session_timeout_ms=2000, heartbeat_interval_ms=500, max_poll_interval_ms=3000))})

    def job_for(**kw):
        config = StreamConfig.from_settings(quick, group="g-disp", **names, max_batch=256, snapshot_interval_s=0.0,
                                            snapshot_min_records=1, **kw)
        return FraudStreamJob(quick, Store.from_url(fresh_pg_url), scorer, config, StreamMetrics(), name="g-disp")

    # 1. a running consumer: transactions, then the verdicts (and hostile ones), then the customer's next one
    job = job_for()
    job.close = lambda: None  # it will die: no snapshot on the way out
    done: dict = {}
    thread = threading.Thread(target=lambda: done.setdefault("counts", job.run(seconds=120)))
    thread.start()
    try:
        produce(kafka_broker.settings, tx_topic, valid[:120])
        _until(lambda: job.counts.scored >= 120, "the first transactions")
        owner = next(p for p, st in job.states.items() if cust in st.customers.index)
        o = job.owned[owner]  # the consumer is idle: its state as a snapshot would hold it, before the verdict
        old = (o.tx_next, o.labels_next, o.state.snapshot())
        produce(kafka_broker.settings, ds_topic, [(cust, v) for v in hostile] + [(cust, verdict.to_json())])
        _until(lambda: job.counts.dispositions >= 1 and job.counts.dead_letters >= len(hostile), "the dispositions")
        produce(kafka_broker.settings, tx_topic, [probes[0]])
        _until(lambda: job.counts.scored >= 121, "the probe")
    finally:
        job.stop()
        thread.join(60)
    assert job.counts.dispositions == 1
    snap = PartitionStateStore(job.store, job.snapshots.stream).load(owner)
    assert snap.dispositions_offset == len(hostile) + 1  # the probe's batch snapshotted the partition

    # 2. a crash after that snapshot: the next consumer restores it and does not read the verdicts again
    produce(kafka_broker.settings, tx_topic, [probes[1]] + valid[120:])
    job2 = job_for()
    counts2 = job2.run(seconds=120, idle_exit_s=1.0)
    assert counts2.dispositions == 0

    # 3. a restore from an old snapshot (taken before the verdict, without a dispositions offset): the
    # dispositions are read again from the start; the verdict still counts once
    PartitionStateStore(Store.from_url(fresh_pg_url), job.snapshots.stream).save(owner, *old)
    produce(kafka_broker.settings, tx_topic, [probes[2]])
    job3 = job_for()
    job3.close = lambda: None  # keep the states to inspect them
    counts3 = job3.run(seconds=120, idle_exit_s=1.0)
    assert counts3.dispositions == 1 and counts3.rebuilt > 0
    probe = probes[2].model_copy(update={"transaction_id": "probe-x", "timestamp": probes[2].timestamp
                                         + timedelta(hours=1)})
    ctx = job3.states[owner].context_batch([probe])
    assert ctx.review_num[0, REVIEW_FIELDS.index("customer_reviewed_frauds")] == 0.25  # min(1, 8) / 4: once
    job3.consumer.close(autocommit=False)
    job3.producer.close(1)

    # every transaction scored once; the hostile dispositions dead-lettered once each, with their reasons
    stored = _stored_partition(fresh_pg_url, tx_topic)
    assert sorted(tid for v in stored.values() for _, tid, _ in v) == sorted(by_id)
    last = next(o for o, tid, _ in stored[owner] if tid == probes[2].transaction_id)
    assert counts3.rebuilt == last - old[0]  # restored from the old snapshot, not from the start
    with Store.from_url(fresh_pg_url) as s:
        letters = [r for r in s.dead_letter_rows(limit=100) if r["source"] == ds_topic]
    assert sorted(r["offset"] for r in letters) == list(range(len(hostile)))
    assert [r["stage"] for r in sorted(letters, key=lambda r: r["offset"])] == ["decode_disposition"] * 5 + ["disposition"]
    assert "disposition" in sorted(letters, key=lambda r: r["offset"])[1]["reason"]

    # the scores: an offline replay of the owner's partition with the verdict known from disposed_at
    def replay(with_verdict: bool) -> dict[str, float]:
        state = scorer.new_state()
        if with_verdict:
            state.apply_dispositions([target.transaction_id], ["fraud"], [decided], [cust], [target.terminal_id])
        txs = [by_id[tid] for _, tid, _ in stored[owner]]
        return {s.transaction_id: s.score for s in scorer.score(txs, state, explain_top_k=0)}

    known, unknown = replay(True), replay(False)
    got = {tid: score for _, tid, score in stored[owner]}
    assert max(abs(known[k] - got[k]) for k in got) < 1e-4
    for p in probes:
        assert abs(known[p.transaction_id] - unknown[p.transaction_id]) > 1e-3, p.transaction_id
    before = [t.transaction_id for t in valid[:120] if t.customer_id == cust]
    assert all(known[k] == unknown[k] for k in before)  # decided after them: no earlier score changes


def test_a_dispositions_topic_with_another_partition_count_is_a_clear_error(kafka_broker, fresh_pg_url, scorer):
    from pipelines.errors import ArgusError

    names = {**topics(kafka_broker, partitions=2), "dispositions_topic": kafka_broker.new_topic("ds", 3)}
    with pytest.raises(ArgusError, match="dispositions topic .* has 3 partitions"):
        make_job(kafka_broker, fresh_pg_url, scorer, names, "g-disp-parts")
