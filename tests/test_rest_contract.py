"""The REST ingress without Ray: its FastAPI app on in-process handles (the real FraudScorer
deployment class with tiny weights, a fake summariser), over httpx's ASGI transport. What the
contract says and the code does: strict types, oneOf bodies, the key checked before the body is
read, failed requests limited per address, per-key limits shared by two ingresses through Redis,
error bodies with nothing internal, results owned by tenants, callers scored apart."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import httpx
import pytest

from pipelines.contracts import ReportSummary, Transaction
from services.ingress import IngressCore, create_api
from services.security import hash_key

TX = {"transaction_id": "c-tx-1", "timestamp": "2024-05-01T12:30:00Z", "customer_id": "cust-1",
      "terminal_id": "term-1", "amount": 129.5}
KEYS = {"acme": "key-acme", "globex": "key-globex", "admin": "key-admin", "fraud": "key-fraud-only"}
REDIS = "redis://127.0.0.1:6379/0"


class LocalHandle:
    """`handle.method.remote(...)` -> the object's (async) method, as a Serve handle would call it."""

    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        method = getattr(self.obj, name)
        return SimpleNamespace(remote=lambda *a, **k: method(*a, **k))


class FakeSummarizer:
    def __init__(self, ready_error: Exception | None = None):
        self.ready_error = ready_error

    async def ready(self):
        if self.ready_error:
            raise self.ready_error
        return {"state": "ready", "model_version": "fake-summ", "error": None}

    async def summarize(self, report, mode=None):
        return ReportSummary(report_id=report.report_id, domain=report.domain, summary=report.text[:40],
                             model_version="fake-summ"), 1


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    from services.fraud_deployment import FraudScorerDeployment
    from tests.fixtures.ray_local import save_tiny_fraud_checkpoint

    ckpt = save_tiny_fraud_checkpoint(tmp_path_factory.mktemp("ckpt") / "fraud-tiny")
    deployment = FraudScorerDeployment.func_or_class(checkpoint=str(ckpt), device="cpu")
    deployment.model._done.wait(120)
    assert deployment.model.ready, deployment.model.error
    return deployment


def make_app(fraud, store_url: str | None, summarizer=None, extra_keys=None, **config):
    keys = {**(extra_keys or {}),hash_key(KEYS["acme"]): {"scopes": ["fraud:score", "reports:summarize", "results:read"], "tenant": "acme"},
            hash_key(KEYS["globex"]): {"scopes": ["fraud:score", "reports:summarize", "results:read"],
                                       "tenant": "globex"},
            hash_key(KEYS["admin"]): ["results:read", "results:admin"],
            hash_key(KEYS["fraud"]): ["fraud:score"]}
    core = IngressCore(LocalHandle(fraud), LocalHandle(summarizer or FakeSummarizer()),
                       {"api_key_hashes": keys, "store_url": store_url, **config})
    return core, create_api(core)


def call(app, requests, client=("10.0.0.1", 4000)):
    """Send [(method, path, key, json|bytes)] in order; returns the responses."""
    async def go():
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://argus") as c:
            out = []
            for method, path, key, body in requests:
                headers = {"X-API-Key": KEYS.get(key, key)} if key else {}
                kw = {"content": body, "headers": {**headers, "Content-Type": "application/json"}} \
                    if isinstance(body, bytes) else {"json": body, "headers": headers}
                out.append(await c.request(method, path, **(kw if body is not None else {"headers": headers})))
            return out

    return asyncio.run(go())


def test_types_are_strict_as_documented(fraud, sqlite_url):
    _, app = make_app(fraud, sqlite_url)
    bad = {"lon": {**TX, "lon": False}, "amount": {**TX, "amount": "129.5"}, "timestamp": {**TX, "timestamp": 1714566600},
           "schema_version": {**TX, "schema_version": 2}, "customer_id": {**TX, "customer_id": "c\u0085"}}
    answers = call(app, [("POST", "/v1/fraud/score", "acme", body) for body in bad.values()])
    for (field, _), r in zip(bad.items(), answers):
        assert r.status_code == 422, (field, r.text)
        assert r.json()["code"] == "invalid_request" and ["body", field] in [e["loc"] for e in r.json()["detail"]]
    for ts in ("2024-05-01T12:30:00", "1969-12-31T23:00:00Z", "2024-05-01 12:30:00Z"):  # no offset / out of range / no T
        assert call(app, [("POST", "/v1/fraud/score", "acme", {**TX, "timestamp": ts})])[0].status_code == 422, ts
    ok = call(app, [("POST", "/v1/fraud/score", "acme", {**TX, "lon": 2.5, "lat": 0})])[0]
    assert ok.status_code == 200, ok.text
    spec = app.openapi()
    tx_schema = spec["components"]["schemas"]["HistoryTransaction"]["properties"]
    assert tx_schema["timestamp"]["format"] == "date-time" and tx_schema["amount"]["maximum"] == 1e12
    assert "not" in tx_schema["customer_id"]  # no control characters, said in the schema


def test_bodies_with_alternatives_are_one_of(fraud, sqlite_url):
    _, app = make_app(fraud, sqlite_url)
    spec = app.openapi()
    for path in ("/v1/fraud/score", "/v1/reports/summarize"):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert len(schema["oneOf"]) == 2
    report = {"report_id": "r-1", "domain": "medical", "text": "The lungs are clear."}
    both, text, full, blank, punct = call(app, [
        ("POST", "/v1/reports/summarize", "acme", {"text": "Revenue rose.", "report": report}),
        ("POST", "/v1/reports/summarize", "acme", {"text": "Revenue rose 12%."}),
        ("POST", "/v1/reports/summarize", "acme", {"report": report, "mode": "extractive"}),
        ("POST", "/v1/reports/summarize", "acme", {"text": "   "}),
        ("POST", "/v1/reports/summarize", "acme", {"text": "?!"}),
    ])
    assert both.status_code == 422 and text.status_code == 200 and full.status_code == 200
    assert full.json()["report_id"] == "r-1"
    assert blank.status_code == 422 and punct.status_code == 422  # the documented pattern: a letter or a digit


def test_non_json_body_is_a_documented_422(fraud, sqlite_url):
    _, app = make_app(fraud, sqlite_url)
    for body in (b"{not json", b"", b"[1, 2]", b"\xff\xfe"):
        r = call(app, [("POST", "/v1/fraud/score", "acme", body)])[0]
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", (body, r.text)
    assert "422" in app.openapi()["paths"]["/v1/fraud/score"]["post"]["responses"]
    assert "400" not in app.openapi()["paths"]["/v1/fraud/score"]["post"]["responses"]


def test_the_key_is_checked_before_the_body_is_read(fraud, sqlite_url):
    _, app = make_app(fraud, sqlite_url)

    async def send_raw(key: str | None, path: str) -> tuple[int, bool]:
        read = False
        sent = []

        async def receive():
            nonlocal read
            read = True
            return {"type": "http.request", "body": b'{"text": "x"}', "more_body": False}

        async def send(message):
            sent.append(message)

        headers = [(b"content-type", b"application/json"), (b"content-length", b"13")]
        if key:
            headers.append((b"x-api-key", key.encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("10.0.0.9", 1), "server": ("argus", 80)}
        await app(scope, receive, send)
        return sent[0]["status"], read

    assert asyncio.run(send_raw(None, "/v1/reports/summarize")) == (401, False)
    assert asyncio.run(send_raw("not-a-key", "/v1/fraud/score")) == (401, False)
    assert asyncio.run(send_raw(KEYS["fraud"], "/v1/reports/summarize")) == (403, False)
    assert asyncio.run(send_raw(KEYS["acme"], "/v1/reports/summarize"))[1] is True  # a good key: now it is read


def test_failed_requests_are_limited_per_client_address(fraud, sqlite_url):
    _, app = make_app(fraud, sqlite_url, failure_rate_limit_per_minute=3)
    failing = call(app, [("GET", "/v1/results/x", "wrong-key", None)] * 3 + [("GET", "/v1/results/x", "acme", None)],
                   client=("10.0.0.66", 1))
    assert [r.status_code for r in failing] == [401, 401, 401, 429]
    assert failing[3].json()["code"] == "too_many_failures" and int(failing[3].headers["Retry-After"]) >= 1
    other = call(app, [("GET", "/v1/results/x", "acme", None)], client=("10.0.0.67", 1))[0]
    assert other.status_code == 404  # another address is not affected
    assert call(app, [("GET", "/v1/ping", None, None)], client=("10.0.0.66", 1))[0].status_code == 200


def test_per_key_limit_holds_across_two_ingresses_sharing_redis(fraud, sqlite_url):
    import redis

    assert redis.Redis.from_url(REDIS).ping()  # .ci/run starts Redis when it is down
    key = f"key-{uuid.uuid4().hex}"  # a fresh key, so an earlier run's window does not count
    extra = {hash_key(key): ["results:read"]}
    limits = {"key_rate_limits": {hash_key(key): 4}, "extra_keys": extra}
    shared = [make_app(fraud, sqlite_url, rate_limit_storage=REDIS, **limits)[1] for _ in range(2)]
    # alternate between the two ingresses: one budget of 4 between them
    assert [call(shared[i % 2], [("GET", "/v1/results/nothing", key, None)])[0].status_code
            for i in range(6)] == [404, 404, 404, 404, 429, 429]
    # per replica (no Redis configured) each ingress allows 4 of its own
    local = [make_app(fraud, sqlite_url, **limits)[1] for _ in range(2)]
    assert [call(local[i % 2], [("GET", "/v1/results/nothing", key, None)])[0].status_code
            for i in range(6)] == [404] * 6


def test_errors_and_healthz_say_nothing_internal(fraud):
    url = "postgresql+psycopg://scott:hunter2pw@127.0.0.1:1/argusdb"  # nothing listens on port 1
    _, app = make_app(fraud, url, summarizer=FakeSummarizer(ready_error=RuntimeError("/srv/secret/summ.bin gone")))
    r, health = call(app, [("GET", "/v1/results/x", "acme", None), ("GET", "/healthz", None, None)])
    assert r.status_code == 503 and r.json() == {"code": "store_unavailable", "detail": "the results store is unavailable"}
    assert health.status_code == 503 and health.json()["code"] == "model_unreachable"
    for text in (r.text, health.text):
        for secret in ("scott", "hunter2pw", "127.0.0.1", "argusdb", "psycopg", "/srv/secret", "RuntimeError"):
            assert secret not in text


def test_unknown_id_on_a_fresh_store_is_404(fraud, tmp_path):
    from typer.testing import CliRunner

    from services.cli import app as cli

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    _, app = make_app(fraud, url)  # starting the ingress creates the schema
    r = call(app, [("GET", "/v1/results/0", "acme", None)])[0]
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    result = CliRunner().invoke(cli, ["store", "stats", "--url", other])  # creates the schema, shows zeros
    assert result.exit_code == 0, result.output
    assert "fraud_scores" in result.output


def test_results_are_owned_by_the_tenant_that_made_them(fraud, sqlite_url):
    _, app = make_app(fraud, sqlite_url)
    made, mine, theirs, missing, admin, summary, summary_theirs = call(app, [
        ("POST", "/v1/fraud/score", "acme", {**TX, "transaction_id": "own-1"}),
        ("GET", "/v1/results/own-1", "acme", None),
        ("GET", "/v1/results/own-1", "globex", None),
        ("GET", "/v1/results/does-not-exist", "globex", None),
        ("GET", "/v1/results/own-1", "admin", None),
        ("POST", "/v1/reports/summarize", "acme", {"text": "Revenue rose 12%.", "report_id": "own-r"}),
        ("GET", "/v1/results/own-r", "globex", None),
    ])
    assert made.status_code == 200 and mine.status_code == 200
    assert mine.json()["score"] == made.json()["scores"][0]["score"]
    assert (theirs.status_code, theirs.content) == (404, missing.content)
    assert admin.status_code == 200 and summary.status_code == 200
    assert (summary_theirs.status_code, summary_theirs.content) == (404, missing.content)


def test_callers_in_one_model_batch_are_scored_apart(fraud):
    """Items of different requests in one batch (what the ingress sends): each scored exactly as if
    alone, whatever else shares the batch (the same customer, terminal, or a history)."""
    def tx(i, **kw):
        return Transaction(**{**TX, "transaction_id": f"apart-{i}", "amount": 40.0 + 900.0 * i,
                              "timestamp": f"2024-05-01T12:{10 + i:02d}:00Z", **kw})

    history = tuple(tx(100 + j, timestamp=f"2024-04-2{j}T08:00:00Z") for j in range(3))
    items = [(tx(0), ()), (tx(1), history), (tx(2), ()), (tx(3, terminal_id="term-9"), ()), (tx(4), history[:1])]
    scorer = fraud.model.value
    together = fraud._score_independent(scorer, items)
    alone = [fraud._score_independent(scorer, [item])[0] for item in items]
    for a, b in zip(alone, together):
        assert b.score == pytest.approx(a.score, abs=1e-6) and b.reasons == a.reasons
    # one request's own transactions do see each other (in order): the same batch scored as one request
    ordered = fraud._score_items(scorer, [(tx(0), ()), (tx(2), ())])
    assert ordered[1].score != pytest.approx(alone[2].score, abs=1e-7)


def test_owned_writes_on_both_backends(store):
    from pipelines.contracts import FraudScore

    t = Transaction(**TX)
    store.write_owned("acme", scores=[(FraudScore(transaction_id=t.transaction_id, score=0.3, decision="review",
                                                  model_version="m"), t)])
    store.write_owned("globex", scores=[(FraudScore(transaction_id=t.transaction_id, score=0.9, decision="decline",
                                                    model_version="m"), t)])  # not its id: ignored
    assert store.get_result(t.transaction_id, tenant="acme").score == pytest.approx(0.3)
    assert store.get_result(t.transaction_id, tenant="globex") is None
    assert store.get_result(t.transaction_id).score == pytest.approx(0.3)  # no tenant: an admin's read
    store.upsert_scores([FraudScore(transaction_id="stream-1", score=0.1, decision="approve", model_version="m")])
    assert store.get_result("stream-1", tenant="acme") is None and store.get_result("stream-1") is not None


def test_no_request_field_takes_a_url_or_an_owner(fraud, sqlite_url):
    """Nothing is fetched on a caller's behalf (no URL-typed input: SSRF), and a caller cannot set
    what the server decides (tenant, owner, scores: mass assignment), since every request object
    forbids unknown properties."""
    _, app = make_app(fraud, sqlite_url)
    spec = app.openapi()

    def walk(node):
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    request_schemas = [spec["components"]["schemas"][n] for n in ("TransactionIn", "HistoryTransaction", "ScoreBatchIn",
                                                                  "BatchTransactionIn", "SummarizeTextIn",
                                                                  "SummarizeReportIn", "ReportIn")]
    for schema in request_schemas:
        assert schema["additionalProperties"] is False
        for node in walk(schema):
            assert node.get("format") not in ("uri", "url", "iri", "hostname", "ipv4", "ipv6")
            assert not any(k in ("url", "uri", "callback", "webhook", "owner", "tenant")
                           for k in node.get("properties", {}))
    r = call(app, [("POST", "/v1/fraud/score", "acme", {**TX, "owner": "globex"})])[0]
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "owner"]
