"""The report stream, proven by counting: real tansu broker, real local Ray (summariser actor), real
PostgreSQL and SQLite. Valid reports produced == summary rows; bad ones == dead letters (table and
topic); a consumer that dies after its store write but before its offset commit is replaced by a new
one in the same group, which starts at the position stored with the rows - no row is duplicated."""

from __future__ import annotations

import json

import pytest

from pipelines.simulate_reports import finance_report, medical_report

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # Ray start + model load + group joins

N_VALID = 6
BAD = [
    b"{not json",
    json.dumps({"report_id": "r-legal", "domain": "legal", "text": "The parties agree to the terms below."}).encode(),
    json.dumps({"report_id": "r-empty", "domain": "medical", "text": "  "}).encode(),
    json.dumps({"report_id": "r-table", "domain": "finance", "text": "| 1.0 | 2.0 |\n|---|---|\n| 3.5 | 4.5 |"}).encode(),
]


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def pool(ray_local):
    from services.summarize_actor import SummarizerPool

    p = SummarizerPool(None, replicas=1, num_cpus=0)
    yield p
    p.close()


def _settings(kafka_broker, reports_topic: str, dlq_topic: str):
    s = kafka_broker.settings
    return s.model_copy(update={
        "topics": s.topics.model_copy(update={"reports": reports_topic, "dead_letter": dlq_topic}),
        "summariser": s.summariser.model_copy(update={"stream_max_records": 3}),
    })


def _produce(settings) -> None:
    from pipelines.kafka_io import make_producer

    producer = make_producer(settings)
    for i in range(N_VALID):
        r = finance_report(100 + i, words=120) if i % 2 == 0 else medical_report(100 + i)
        producer.send(settings.topics.reports, r.to_json(), key=r.report_id)
        if i < len(BAD):  # interleave the bad ones
            producer.send(settings.topics.reports, BAD[i], key=f"bad-{i}")
    producer.flush(30)
    producer.close()


def test_effectively_once_with_a_crash_before_commit(kafka_broker, pool, store):
    from pipelines.kafka_io import count_records
    from pipelines.report_stream import ReportStreamJob

    settings = _settings(kafka_broker, kafka_broker.new_topic("reports", partitions=2), kafka_broker.new_topic("dlq", 1))
    _produce(settings)
    total = N_VALID + len(BAD)

    first = ReportStreamJob(settings, store, pool, group="g-reports", name="reports-a")
    real_commit = first.runtime.commit

    def crashing_commit(batch):
        """Dies after its second batch is written to the store, before the offsets are committed."""
        if first.runtime.counts.batches == 1:
            raise Crash("simulated crash between store write and offset commit")
        real_commit(batch)

    first.runtime.commit = crashing_commit
    with pytest.raises(Crash):
        first.run(seconds=120)
    assert first.counts.batches == 2  # one committed, one written but not committed
    written_by_first = store.count("report_summaries") + store.count("dead_letters")
    assert 0 < written_by_first <= total

    second = ReportStreamJob(settings, store, pool, group="g-reports", name="reports-b")
    second.run(seconds=180, idle_exit_s=3.0)

    # Exactly once: the second consumer starts at the positions stored with the rows, so the batch
    # written but not committed to Kafka is not read again.
    assert first.counts.consumed + second.counts.consumed == total
    assert store.count("report_summaries") == N_VALID
    assert store.count("dead_letters") == len(BAD)
    letters = store.dead_letter_rows(source=settings.topics.reports)
    assert len({(d["partition"], d["offset"]) for d in letters}) == len(BAD)
    stages = sorted(d["stage"] for d in letters)
    assert stages == ["decode", "decode", "decode", "validate_input"]
    assert any("malformed json" in d["reason"] for d in letters)
    assert any("domain" in d["reason"] for d in letters)
    ids = {f"fin-{100 + i}" if i % 2 == 0 else f"med-{100 + i}" for i in range(N_VALID)}
    for rid in ids:
        summary = store.get_result(rid, pool.model_version)
        assert summary is not None and summary.summary and summary.sentences
    # The dead-letter topic got every bad record with its reason (at least once).
    assert count_records(settings, settings.topics.dead_letter, idle_timeout_s=2.0) >= len(BAD)


def test_a_long_summary_keeps_the_group_membership(kafka_broker, pool, store):
    """Summarising runs on a worker thread while the runtime polls with every partition paused: a
    batch that takes longer than max_poll_interval_ms (10 s here) costs no rebalance and no re-read."""
    import time

    from pipelines.report_stream import ReportStreamJob

    settings = _settings(kafka_broker, kafka_broker.new_topic("reports", partitions=1), kafka_broker.new_topic("dlq", 1))
    assert settings.kafka.max_poll_interval_ms <= 10_000
    from pipelines.kafka_io import make_producer

    producer = make_producer(settings)
    for i in range(2):
        r = finance_report(300 + i, words=80)
        producer.send(settings.topics.reports, r.to_json(), key=r.report_id)
    producer.flush(30)
    producer.close()

    class SlowPool:
        model_version = pool.model_version

        def summarize(self, *args, **kwargs):
            time.sleep(12.0)  # longer than max_poll_interval_ms
            return pool.summarize(*args, **kwargs)

    # a group of its own: the other store's run left a member in "g-slow" without LeaveGroup (by design), and
    # joining beside it waits for its session to expire, a rebalance this test is not about
    job = ReportStreamJob(settings, store, SlowPool(), group=f"g-slow-{settings.topics.reports}", name="reports-slow")
    job.run(seconds=120, idle_exit_s=3.0)
    assert job.counts.consumed == 2 and job.counts.summarised == 2
    assert job.runtime.assignments == 1 and job.runtime.counts.rejoins == 0  # never left the group
