"""Single transactions scored inside the Ingress (`score_in_ingress`, services/fraud_scoring.py): the
same scores as the FraudScorer deployment for the same inputs and state, the stream's state snapshot
followed when it changes, the FraudScorer not called for them (batch requests still are), results
owned by tenants, 503 while the in-ingress model loads or after it failed, the Ingress's user_config
thresholds applied, and build_app turning it on for CPU models only. The Ingress's FastAPI app over
httpx's ASGI transport (no Ray), as tests/test_rest_contract.py."""

from __future__ import annotations

import threading

import pytest

from models.fraud_scorer import FraudScorer
from pipelines.contracts import Transaction
from services.fraud_deployment import FraudScorerDeployment
from services.fraud_scoring import FraudScoring
from services.ingress import Ingress
from tests.fixtures.ray_local import KNOWN_CUSTOMER, known_history, save_tiny_fraud_checkpoint
from tests.test_rest_contract import call, make_app

TX = {"transaction_id": "ii-tx-1", "timestamp": "2024-05-01T12:30:00Z", "customer_id": KNOWN_CUSTOMER,
      "terminal_id": "known-term", "amount": 2500.0}


class CountingScorer:
    """The FraudScorer deployment behind a handle that counts its calls."""

    def __init__(self, deployment):
        self.deployment = deployment
        self.calls: list[int] = []

    async def score_many(self, items, independent=False):
        self.calls.append(len(items))
        return await self.deployment.score_many(items, independent=independent)

    async def ready(self):
        return await self.deployment.ready()


class GatedScorer(FraudScorer):
    """A FraudScorer whose load waits for `gate` (so a test sees the model loading)."""

    gate = threading.Event()

    @classmethod
    def load(cls, *args, **kwargs):
        assert cls.gate.wait(60)
        return FraudScorer.load(*args, **kwargs)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(save_tiny_fraud_checkpoint(tmp_path_factory.mktemp("ckpt") / "fraud-tiny"))


def _snapshot(path, ckpt, history):
    state = FraudScorer.load(ckpt, device="cpu").new_state()
    state.update_batch(history)
    path.write_bytes(state.snapshot())


def _loaded(scoring):
    scoring.model._done.wait(120)
    assert scoring.model.ready, scoring.model.error
    return scoring


def _app(ckpt, store_url, snapshot=None, **scorer_args):
    args = {"checkpoint": ckpt, "device": "cpu", "state_snapshot": snapshot, "state_refresh_s": 0.0, **scorer_args}
    remote = CountingScorer(_loaded(FraudScorerDeployment.func_or_class(**args)))
    core, app = make_app(remote, store_url, in_ingress_scorer=args)
    _loaded(core.local_fraud)
    return core, app, remote


def _expected(deployment, body):
    tx = Transaction(**{k: v for k, v in body.items() if k != "history"})
    history = tuple(Transaction(**h) for h in body.get("history", ()))
    import asyncio

    [score], _ = asyncio.run(deployment.score_many([(tx, history)], independent=True))
    return _unstamped(score.model_dump(mode="json"))


def _unstamped(score: dict) -> dict:
    return {k: v for k, v in score.items() if k != "scored_at"}  # when it was scored differs, nothing else


def test_scores_equal_the_fraud_scorers_and_skip_the_second_hop(ckpt, sqlite_url, tmp_path):
    snapshot = tmp_path / "state.npz"
    _snapshot(snapshot, ckpt, known_history())
    core, app, remote = _app(ckpt, sqlite_url, str(snapshot))
    bodies = [TX, {**TX, "transaction_id": "ii-tx-2", "customer_id": "someone-new", "amount": 12.5},
              {**TX, "transaction_id": "ii-tx-3", "history": [{**TX, "transaction_id": "ii-h-1", "amount": 9000.0,
                                                             "timestamp": "2024-05-01T12:00:00Z"}]}]
    answers = call(app, [("POST", "/v1/fraud/score", "acme", b) for b in bodies])
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert remote.calls == []  # scored in the ingress: no call to the FraudScorer
    for body, r in zip(bodies, answers):
        assert [_unstamped(s) for s in r.json()["scores"]] == [_expected(remote.deployment, body)]
    assert answers[0].json()["scores"][0]["score"] != answers[1].json()["scores"][0]["score"]  # the state mattered
    batch = call(app, [("POST", "/v1/fraud/score", "acme", {"transactions": [TX]})])[0]
    assert batch.status_code == 200 and remote.calls == [1]  # batch requests still go to the FraudScorer
    health = call(app, [("GET", "/healthz", None, None)])[0]
    assert health.json()["models"]["fraud"] == {"state": "ready", "model_version": "fraud-tiny-test"}


def test_a_new_state_snapshot_is_seen(ckpt, sqlite_url, tmp_path):
    snapshot = tmp_path / "state.npz"
    _snapshot(snapshot, ckpt, known_history()[:1])
    core, app, remote = _app(ckpt, sqlite_url, str(snapshot))
    assert core.local_fraud.inline  # scored on the event loop; the snapshot read on the scoring thread:
    threads: list[str] = []
    maintain = core.local_fraud._maintain
    core.local_fraud._maintain = lambda: (threads.append(threading.current_thread().name), maintain())[1]
    before = call(app, [("POST", "/v1/fraud/score", "acme", TX)])[0].json()["scores"][0]
    _snapshot(snapshot, ckpt, known_history())  # the stream job moved on
    import os

    os.utime(snapshot, ns=(1, os.stat(snapshot).st_mtime_ns + 10**9))  # a new token even on a coarse clock
    after = call(app, [("POST", "/v1/fraud/score", "acme", {**TX, "transaction_id": "ii-tx-1b"})])[0].json()["scores"][0]
    assert after["score"] != before["score"]
    assert _unstamped({**after, "transaction_id": TX["transaction_id"]}) == _expected(remote.deployment, TX)
    assert threads and all(name.startswith("fraud-score") for name in threads), threads


def test_results_scored_in_the_ingress_are_owned(ckpt, sqlite_url):
    _, app, _ = _app(ckpt, sqlite_url)
    made, mine, theirs, admin = call(app, [
        ("POST", "/v1/fraud/score", "acme", {**TX, "transaction_id": "ii-owned"}),
        ("GET", "/v1/results/ii-owned", "acme", None),
        ("GET", "/v1/results/ii-owned", "globex", None),
        ("GET", "/v1/results/ii-owned", "admin", None)])
    assert made.status_code == 200 and mine.status_code == 200 and admin.status_code == 200
    assert mine.json()["score"] == made.json()["scores"][0]["score"]
    unknown = call(app, [("GET", "/v1/results/ii-never-made", "globex", None)])[0]
    assert theirs.status_code == 404 and theirs.content == unknown.content  # the same as an unknown id


def test_503_while_the_in_ingress_model_loads_and_after_it_failed(ckpt, sqlite_url):
    GatedScorer.gate.clear()
    remote = CountingScorer(_loaded(FraudScorerDeployment.func_or_class(checkpoint=ckpt, device="cpu")))
    core, app = make_app(remote, sqlite_url, in_ingress_scorer={
        "checkpoint": ckpt, "device": "cpu", "scorer_class": "tests.test_rest_in_ingress:GatedScorer"})
    loading, health = call(app, [("POST", "/v1/fraud/score", "acme", TX), ("GET", "/healthz", None, None)])
    assert loading.status_code == 503 and loading.headers["Retry-After"]
    assert loading.json() == {"code": "model_loading", "detail": "a model is still loading"}
    assert health.status_code == 503 and health.json()["models"]["fraud"]["state"] == "loading"
    GatedScorer.gate.set()
    _loaded(core.local_fraud)
    assert call(app, [("POST", "/v1/fraud/score", "acme", TX)])[0].status_code == 200
    assert remote.calls == []

    core, app = make_app(remote, sqlite_url, in_ingress_scorer={"checkpoint": "/nonexistent/fraud-ckpt", "device": "cpu"})
    core.local_fraud.model._done.wait(60)
    failed, health = call(app, [("POST", "/v1/fraud/score", "acme", TX), ("GET", "/healthz", None, None)])
    assert failed.status_code == 503
    assert failed.json() == {"code": "model_failed", "detail": "a model failed to load; see /healthz"}
    assert health.json()["models"]["fraud"] == {"state": "failed", "model_version": None}
    assert "nonexistent" not in failed.text + health.text


def test_the_ingress_user_config_sets_the_thresholds(ckpt, sqlite_url):
    core, app, remote = _app(ckpt, sqlite_url)
    Ingress.func_or_class.reconfigure(core, {"alert_threshold": 0.0, "review_threshold": 0.0, "explain_top_k": 0})
    [score] = call(app, [("POST", "/v1/fraud/score", "acme", TX)])[0].json()["scores"]
    assert score["decision"] == "decline" and score["reasons"] == []


def test_build_app_scores_in_the_ingress_for_cpu_models(monkeypatch):
    from services.app import build_app

    def bound(args):
        app = build_app({"device": "cpu", "gpus_per_replica": 0, "fraud_checkpoint": "/ckpt", **args})
        ingress = app._bound_deployment
        fraud = ingress.init_args[0]
        return ingress.init_args[2]["in_ingress_scorer"], fraud._bound_deployment.init_kwargs

    local, fraud = bound({"state_snapshot": "store://g/t", "alert_threshold": 0.7})
    assert local == {**fraud, "device": "cpu"}  # the FraudScorer's arguments, every one
    assert local["state_snapshot"] == "store://g/t" and local["alert_threshold"] == 0.7
    assert bound({"score_in_ingress": False})[0] is None
    assert bound({"gpus_per_replica": 1})[0] is None  # GPU models: auto keeps scoring on the GPU replicas
    assert bound({"gpus_per_replica": 1, "score_in_ingress": True})[0]["device"] == "cpu"


def test_one_scoring_core():
    """The deployment is the core plus Serve's batching, not a second implementation."""
    assert issubclass(FraudScorerDeployment.func_or_class, FraudScoring)
    for name in ("score_many", "_score", "_refresh_state", "_private_state", "ready", "configure"):
        assert name not in vars(FraudScorerDeployment.func_or_class), name



class Stalled:
    """A scorer that does not answer in time."""

    async def score_many(self, items, independent=False):
        import asyncio

        await asyncio.sleep(30)

    async def ready(self):
        return {"state": "ready", "model_version": "stalled"}


def test_a_model_that_does_not_answer_in_time_is_a_504(sqlite_url):
    core, app = make_app(Stalled(), sqlite_url, model_timeout_s=0.2)
    core.local_fraud = Stalled()  # the in-ingress path (single) and the FraudScorer path (batch) alike
    single, batch = call(app, [("POST", "/v1/fraud/score", "acme", TX),
                               ("POST", "/v1/fraud/score", "acme", {"transactions": [TX]})])
    for r in (single, batch):
        assert r.status_code == 504, r.text
        assert r.json() == {"code": "model_timeout", "detail": "the model did not answer within 0.2 s"}
