"""Hot swap of the fraud model on a promotion: the stream (real tansu broker + PostgreSQL) and the REST
deployment class switch to the new champion between batches; nothing is lost or written twice; a
batch is scored by one version; a broken champion leaves the old model serving and says why."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import defaultdict

import pytest
from sqlalchemy import text

from pipelines.fraud_stream import FraudStreamJob, StreamConfig
from pipelines.metrics import StreamMetrics
from pipelines.model_holder import ModelHolder
from pipelines.model_registry import ModelRegistry
from pipelines.store import Store
from tests.fixtures.ray_local import save_tiny_fraud_checkpoint
from tests.stream_fixtures import produce, transactions

OLD, NEW, BROKEN = "fraud-tiny-test", "fraud-b", "fraud-c-broken"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import torch

    from models.checkpoint import save_task_model
    from models.fraud_scorer import FraudModel, FraudModelConfig

    root = tmp_path_factory.mktemp("swap")
    old = save_tiny_fraud_checkpoint(root / "old")  # model_version fraud-tiny-test
    torch.manual_seed(1)
    model = FraudModel(FraudModelConfig.from_preset("tiny"))
    new = save_task_model(root / "new", model, {"task": "fraud", "fraud": model.config.to_dict(),
                                                "model_version": "whatever-the-file-says"}, dtype=None)
    return {"old": old, "new": new, "root": root}


def seed_registry(url: str, checkpoints) -> ModelRegistry:
    store = Store.from_url(url)
    store.create_schema()
    registry = ModelRegistry(store)
    registry.register(OLD, checkpoints["old"], actor="test")
    registry.promote(OLD, actor="test")
    registry.register(NEW, checkpoints["new"], actor="trainer", parent=OLD)
    return registry


def register_then_break(registry: ModelRegistry, checkpoints, name: str) -> None:
    """A champion whose checkpoint breaks on disk after it was checked and promoted."""
    path = shutil.copytree(checkpoints["new"], checkpoints["root"] / name)
    registry.register(BROKEN, path, actor="trainer")
    registry.promote(BROKEN, actor="operator")
    (path / "model.safetensors").write_bytes(b"truncated")


@pytest.mark.integration
def test_stream_swaps_between_batches_without_losing_or_repeating_a_record(kafka_broker, fresh_pg_url, checkpoints):
    from models.fraud_scorer import FraudScorer

    registry = seed_registry(fresh_pg_url, checkpoints)
    names = {"transactions_topic": kafka_broker.new_topic("tx", 2), "labels_topic": kafka_broker.new_topic("lb", 2),
             "dispositions_topic": kafka_broker.new_topic("ds", 2),
             "alerts_topic": kafka_broker.new_topic("alerts", 1), "dead_letter_topic": kafka_broker.new_topic("dlq", 1)}
    config = StreamConfig.from_settings(kafka_broker.settings, group="g-swap", max_batch=50, **names)
    store = Store.from_url(fresh_pg_url)
    holder = ModelHolder(store, FraudScorer.load(checkpoints["old"]), poll_s=0.0, name="g-swap")
    job = FraudStreamJob(kafka_broker.settings, store, holder.scorer, config, StreamMetrics(), name="g-swap",
                         models=holder)
    txs = transactions(750, customers=60, terminals=90, seed=4, prefix="sw")
    batches: list[set[str]] = []  # the model versions of each written batch, in order

    def run_until(stored: int) -> None:  # counted in the store: a rebalance re-reads (consumed counts twice)
        deadline = time.monotonic() + 120
        while store.count("fraud_scores") < stored:
            assert time.monotonic() < deadline, job.counts
            if job.step() and job.last_output.score_rows:
                batches.append({r["model_version"] for r in job.last_output.score_rows})

    try:
        produce(kafka_broker.settings, names["transactions_topic"], txs[:300])
        run_until(300)
        before = len(batches)
        registry.promote(NEW, actor="operator")  # what `argus models promote` does, from another connection
        produce(kafka_broker.settings, names["transactions_topic"], txs[300:600])
        run_until(600)
        register_then_break(registry, checkpoints, "broken-stream")
        produce(kafka_broker.settings, names["transactions_topic"], txs[600:])
        run_until(750)
    finally:
        job.runtime.close()
    # each batch is scored by one version; the versions switch once, at the first batch after the promotion
    assert all(len(b) == 1 for b in batches), batches
    sequence = [next(iter(b)) for b in batches]
    assert sequence == [OLD] * before + [NEW] * (len(sequence) - before), sequence
    assert before >= 2 and len(sequence) - before >= 4
    # the broken champion: the new model kept serving, the error is reported and audited once
    assert holder.version == NEW and holder.swaps == 1
    metrics = job.metrics.render().decode()
    assert f'version="{NEW}"}} 1.0' in metrics and f'version="{OLD}"}} 0.0' in metrics  # argus_stream_model_info
    assert holder.error.startswith(f"champion {BROKEN} not loaded, still serving {NEW}: ")
    failed = [e for e in registry.events(100) if e["action"] == "load_failed"]
    assert [(e["version"], e["actor"]) for e in failed] == [(BROKEN, "g-swap")]
    # every record exactly once, by the old or the new model, in offset order old then new per partition
    with store.engine.connect() as conn:
        n, distinct = conn.execute(text("SELECT count(*), count(DISTINCT transaction_id) FROM fraud_scores")).one()
        rows = conn.execute(text("SELECT source_position, model_version FROM fraud_scores")).all()
    assert n == distinct == len(txs)
    assert {tx.transaction_id for tx in txs} == {r for r in store.score_provenance(tx.transaction_id for tx in txs)}
    per_partition = defaultdict(list)
    for pos, version in rows:
        _, p, offset = pos.rsplit(":", 2)
        per_partition[int(p)].append((int(offset), version))
    for p, seq in per_partition.items():
        versions = [v for _, v in sorted(seq)]
        switch = versions.index(NEW)
        assert set(versions) == {OLD, NEW} and versions == [OLD] * switch + [NEW] * (len(versions) - switch), p
    store.close()
    registry.store.close()


@pytest.mark.parametrize("inline", [False, True], ids=["fraud-scorer", "in-ingress"])
def test_rest_deployment_serves_the_champion_and_swaps_between_batches(sqlite_url, checkpoints, inline):
    """The FraudScorer deployment (scoring thread) and the Ingress's inline scorer (event loop, with
    the registry read on the scoring thread) follow the champion alike."""
    from pipelines.contracts import Transaction
    from services.fraud_deployment import FraudScorerDeployment
    from services.fraud_scoring import FraudScoring

    registry = seed_registry(sqlite_url, checkpoints)
    registry.promote(NEW, actor="operator")  # the champion differs from the configured (shipped) model
    host = FraudScoring if inline else FraudScorerDeployment.func_or_class
    deployment = host(device="cpu", store_url=sqlite_url, registry_poll_s=0.001, inline=inline)
    deployment.model._done.wait(120)
    assert deployment.model.ready, deployment.model.error
    txs = transactions(64, seed=9, prefix="rest")
    items = [(tx, ()) for tx in txs]

    async def score_concurrently(promote_midway: str | None = None) -> list[list[str]]:
        calls = [deployment.score_many(items[i:i + 8], independent=True) for i in range(0, 64, 8)]
        tasks = [asyncio.ensure_future(c) for c in calls[:4]]
        if promote_midway:
            await asyncio.sleep(0)
            await asyncio.get_running_loop().run_in_executor(None, lambda: registry.promote(promote_midway, actor="op"))
        tasks += [asyncio.ensure_future(c) for c in calls[4:]]
        return [[s.model_version for s in scores] for scores, _ in await asyncio.gather(*tasks)]

    first = asyncio.run(score_concurrently())
    assert all(v == [NEW] * 8 for v in first)  # the champion from the first request on
    assert asyncio.run(deployment.ready())["model_version"] == NEW
    during = asyncio.run(score_concurrently(promote_midway=OLD))
    assert all(len(set(v)) == 1 and len(v) == 8 for v in during), during  # one version per batch, none lost
    flat = [v[0] for v in during]
    assert flat[-1] == OLD and flat == sorted(flat, key=lambda v: v == OLD)  # new then old, one switch
    register_then_break(registry, checkpoints, f"broken-rest-{inline}")
    after = asyncio.run(score_concurrently())
    assert all(v == [OLD] * 8 for v in after)  # the broken champion did not replace the one serving
    ready = asyncio.run(deployment.ready())
    assert ready["state"] == "ready" and ready["model_version"] == OLD
    assert ready["registry_error"].startswith(f"champion {BROKEN} not loaded, still serving {OLD}")
    pinned = FraudScorerDeployment.func_or_class(checkpoint=str(checkpoints["old"]), device="cpu", store_url=sqlite_url)
    pinned.model._done.wait(120)
    assert pinned._models is None  # a configured checkpoint pins the model: no registry polling
    registry.store.close()
