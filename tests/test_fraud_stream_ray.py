"""The fraud stream on a real local Ray: consumer actors in one group, SIGKILLed mid-stream, and the
`argus stream fraud` command. Counting proves nothing was lost or written twice."""

from __future__ import annotations

import os
import signal
import time

import pytest
from typer.testing import CliRunner

from pipelines.store import Store
from tests.stream_fixtures import produce, transactions
from tests.test_fraud_stream import assert_counts, reference_scores, rows, topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for_rows(url: str, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = Store.from_url(url).count("fraud_scores")
        if got >= n:
            break
        time.sleep(0.3)
    return got


def test_sigkill_of_a_consumer_actor_loses_nothing_and_scores_stay_the_same(ray_local, kafka_broker, fresh_pg_url):
    """Two consumer actors share 4 partitions; one is SIGKILLed (os.kill of its worker process) while
    it is scoring. The group gives its partitions to the survivor, which restores their state from the
    snapshots in the store and replays to the committed offsets. Then: every valid transaction has
    exactly one row, alerts match the scores, and every score equals the uninterrupted-stream score."""
    import ray

    from models.fraud_scorer import FraudScorer
    from services.fraud_stream_actor import start_actors

    names = topics(kafka_broker)
    valid = transactions(3000, seed=7, prefix="rk")
    produce(kafka_broker.settings, names["transactions_topic"], valid)
    Store.from_url(fresh_pg_url).create_schema()
    actors = start_actors(kafka_broker.settings, fresh_pg_url, consumers=2, num_cpus=0, group="g-ray-kill",
                          max_batch=200, snapshot_interval_s=1.0, snapshot_min_records=100, **names)
    refs = [a.run.remote(150, None) for a in actors]
    assert wait_for_rows(fresh_pg_url, 600, 90) >= 600
    victim = ray.get(actors[0].pid.remote())
    os.kill(victim, signal.SIGKILL)
    assert wait_for_rows(fresh_pg_url, len(valid), 120) == len(valid)
    time.sleep(2.0)  # anything written twice would show up now
    ray.get(actors[1].stop.remote())
    survivor = ray.get(refs[1], timeout=60)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(refs[0], timeout=10)
    assert survivor["rebalances"] >= 2  # it took over the dead consumer's partitions

    assert_counts(fresh_pg_url, {t.transaction_id for t in valid}, 0, 0.5)
    reference = reference_scores(kafka_broker, FraudScorer.load(), names["transactions_topic"])
    got = rows(fresh_pg_url)
    assert max(abs(reference[k] - got[k][0]) for k in reference) < 1e-4


def test_cli_stream_fraud_bounded_run(ray_local, kafka_broker, fresh_pg_url, monkeypatch):
    from services.cli import app

    tx_topic = kafka_broker.new_topic("clitx")
    monkeypatch.setenv("ARGUS_TOPICS__TRANSACTIONS", tx_topic)
    monkeypatch.setenv("ARGUS_TOPICS__LABELS", kafka_broker.new_topic("clilb"))
    from pipelines.settings import get_settings

    get_settings.cache_clear()
    try:
        valid = transactions(500, seed=8, prefix="cli")
        produce(kafka_broker.settings, tx_topic, valid)
        res = CliRunner().invoke(app, ["stream", "fraud", "--bootstrap", kafka_broker.bootstrap, "--store-url",
                                       fresh_pg_url, "--consumers", "1", "--seconds", "90", "--idle-exit", "3",
                                       "--metrics-port", "0", "--actor-cpus", "0", "--group", "g-cli"])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    assert "fraud stream" in res.output
    assert_counts(fresh_pg_url, {t.transaction_id for t in valid}, 0, 0.5)
