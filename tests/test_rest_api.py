"""The REST endpoint on a real local Ray Serve app (real FraudScorer / Summarizer, tiny or shipped
weights): success paths and every error code, plus that no document text or card data reaches
the logs."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TX = {"transaction_id": "rest-tx-1", "timestamp": "2024-05-01T12:30:00Z", "customer_id": "cust-SECRET-9",
      "terminal_id": "term-7", "amount": 129.5}
REPORT_TEXT = ("Revenue rose 12% to $4.2 billion in the quarter ZEBRAMARKER. Operating margin was 18.5%. "
               "The company expects full-year revenue of $17 billion. Debt fell to $1.1 billion.")
CARD_NUMBER = "4111111111111111"


@pytest.fixture(scope="module")
def client(serve_app):
    with httpx.Client(base_url=serve_app.url, timeout=60) as c:
        yield c


def key(serve_app, name):
    return {"X-API-Key": serve_app.keys[name]}


def test_healthz_ready_without_key(client):
    deadline = time.monotonic() + 60
    while True:  # models load in the background after the replicas start
        r = client.get("/healthz")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["models"]["fraud"]["model_version"] and body["models"]["summarizer"]["model_version"]


def test_healthz_503_when_a_model_cannot_load(client):
    deadline = time.monotonic() + 30
    while True:
        r = client.get("/broken/healthz")
        models = r.json().get("models", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
        if models.get("fraud", {}).get("state") == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not ready" and body["code"] == "model_failed"
    assert body["models"]["fraud"] == {"state": "failed", "model_version": None}
    # why it failed (a path, an exception) is in the replica log, never in the answer
    assert "nonexistent" not in r.text and "Error" not in r.text


def test_score_on_a_model_that_failed_to_load_is_503(client, serve_app):
    r = client.post("/broken/v1/fraud/score", json=TX, headers=key(serve_app, "all"))
    assert r.status_code == 503
    assert r.json() == {"code": "model_failed", "detail": "a model failed to load; see /healthz"}
    assert "nonexistent" not in r.text
    assert r.headers["Retry-After"]


def test_score_one_transaction(client, serve_app):
    r = client.post("/v1/fraud/score", json=TX, headers=key(serve_app, "fraud"))
    assert r.status_code == 200, r.text
    [score] = r.json()["scores"]
    assert score["transaction_id"] == "rest-tx-1"
    assert 0.0 <= score["score"] <= 1.0
    assert score["decision"] in ("approve", "review", "decline")
    assert score["model_version"]
    assert isinstance(score["reasons"], list)


def _fraud_batch_metric(client) -> tuple[float, float]:
    text = client.get("/metrics").text
    value = {name: float(line.split()[-1]) for line in text.splitlines()
             for name in ("sum", "count") if line.startswith(f'argus_model_batch_size_{name}{{model="fraud"}}')}
    return value.get("sum", 0.0), value.get("count", 0.0)


def test_concurrent_single_requests_share_model_calls(client, serve_app):
    """The ingress gathers concurrent one-transaction requests into one FraudScorer call; each
    caller still gets exactly its own transaction's score."""
    import asyncio

    sum0, count0 = _fraud_batch_metric(client)
    txs = [{**TX, "transaction_id": f"rest-c-{i}", "customer_id": f"cust-c-{i}", "amount": 10.0 + i} for i in range(24)]

    async def fire():
        async with httpx.AsyncClient(base_url=serve_app.url, timeout=60) as c:
            return await asyncio.gather(*[c.post("/v1/fraud/score", json=t, headers=key(serve_app, "fraud"))
                                          for t in txs])

    answers = asyncio.run(fire())
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    assert [r.json()["scores"][0]["transaction_id"] for r in answers] == [t["transaction_id"] for t in txs]
    assert [len(r.json()["scores"]) for r in answers] == [1] * len(txs)
    sum1, count1 = _fraud_batch_metric(client)
    assert count1 - count0 == len(txs)
    assert (sum1 - sum0) / (count1 - count0) > 1.0  # some requests were scored in a shared batch


def test_score_batch_and_history(client, serve_app):
    txs = [{**TX, "transaction_id": f"rest-b-{i}", "amount": 10.0 * (i + 1)} for i in range(5)]
    history = [{**TX, "transaction_id": f"rest-h-{i}", "timestamp": f"2024-04-{20 + i}T10:00:00Z", "amount": 5.0}
               for i in range(3)]
    txs[0]["history"] = history
    r = client.post("/v1/fraud/score", json={"transactions": txs}, headers=key(serve_app, "all"))
    assert r.status_code == 200, r.text
    assert [s["transaction_id"] for s in r.json()["scores"]] == [t["transaction_id"] for t in txs]
    # history changes the context, so it changes the score of that transaction
    alone = client.post("/v1/fraud/score", json={**TX, "transaction_id": "rest-b-0", "amount": 10.0},
                        headers=key(serve_app, "all")).json()["scores"][0]["score"]
    assert alone != r.json()["scores"][0]["score"]


def test_known_customer_is_scored_with_the_stream_state(client, serve_app):
    """The deployment loaded the stream job's snapshot: its score for a known customer is what a
    scorer with that state gives, and not what an empty state gives."""
    from models.fraud_scorer import FraudScorer
    from pipelines.contracts import Transaction
    from tests.fixtures.ray_local import KNOWN_CUSTOMER, known_history

    tx = {**TX, "transaction_id": "known-now", "customer_id": KNOWN_CUSTOMER, "terminal_id": "known-term",
          "timestamp": "2024-04-20T09:00:00Z", "amount": 2500.0}
    served = client.post("/v1/fraud/score", json=tx, headers=key(serve_app, "all")).json()["scores"][0]["score"]
    scorer = FraudScorer.load(serve_app.fraud_checkpoint, device="cpu")
    with_state = scorer.new_state()
    with_state.update_batch(known_history())
    expected = scorer.score([Transaction(**tx)], with_state)[0].score
    empty = scorer.score([Transaction(**tx)], scorer.new_state())[0].score
    assert served == pytest.approx(expected, abs=1e-5)
    assert abs(expected - empty) > 1e-6


def test_summarize_text_and_report(client, serve_app):
    r = client.post("/v1/reports/summarize", json={"text": REPORT_TEXT, "domain": "finance"},
                    headers=key(serve_app, "all"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"] and body["domain"] == "finance" and body["model_version"]
    for sent in body["sentences"]:
        for span in sent["spans"]:  # spans point into the text we sent
            assert REPORT_TEXT[span["start"]:span["end"]].strip()
    report = {"report_id": "rest-r-1", "domain": "medical", "text": "The lungs are clear. No pleural effusion."}
    r = client.post("/v1/reports/summarize", json={"report": report}, headers=key(serve_app, "all"))
    assert r.status_code == 200, r.text
    assert r.json()["report_id"] == "rest-r-1"


def test_results_from_the_store(client, serve_app):
    """Rows without a tenant (written by a stream) are for admin keys only; to a tenant's key they
    are exactly as absent as an id that does not exist."""
    r = client.get(f"/v1/results/{serve_app.seeded['score']}", headers=key(serve_app, "admin"))
    assert r.status_code == 200 and r.json()["score"] == pytest.approx(0.91)
    r = client.get(f"/v1/results/{serve_app.seeded['summary']}", headers=key(serve_app, "admin"))
    assert r.status_code == 200 and r.json()["summary"] == "No acute disease."
    missing = client.get("/v1/results/no-such-id", headers=key(serve_app, "all"))
    assert missing.status_code == 404
    assert missing.json() == {"code": "not_found", "detail": "no result with this id"}
    hidden = client.get(f"/v1/results/{serve_app.seeded['score']}", headers=key(serve_app, "all"))
    assert (hidden.status_code, hidden.content) == (404, missing.content)


def test_results_belong_to_the_tenant_that_made_them(client, serve_app):
    tx = {**TX, "transaction_id": "tenant-tx-1"}
    made = client.post("/v1/fraud/score", json=tx, headers=key(serve_app, "all"))
    assert made.status_code == 200, made.text
    summary = client.post("/v1/reports/summarize", json={"text": REPORT_TEXT, "report_id": "tenant-r-1"},
                          headers=key(serve_app, "all"))
    assert summary.status_code == 200, summary.text
    missing = client.get("/v1/results/never-made", headers=key(serve_app, "other"))
    for rid, field in (("tenant-tx-1", "score"), ("tenant-r-1", "summary")):
        own = client.get(f"/v1/results/{rid}", headers=key(serve_app, "all"))
        assert own.status_code == 200 and own.json()[field] == (made.json()["scores"][0]["score"] if field == "score"
                                                                else summary.json()["summary"])
        other = client.get(f"/v1/results/{rid}", headers=key(serve_app, "other"))
        assert (other.status_code, other.content) == (404, missing.content)  # not enumerable
        assert client.get(f"/v1/results/{rid}", headers=key(serve_app, "admin")).status_code == 200
    # another tenant scoring the same id neither overwrites nor takes over the first one's result
    again = client.post("/v1/fraud/score", json={**tx, "amount": 9999.0}, headers=key(serve_app, "other"))
    assert again.status_code == 200
    assert client.get("/v1/results/tenant-tx-1", headers=key(serve_app, "other")).status_code == 404
    assert client.get("/v1/results/tenant-tx-1", headers=key(serve_app, "all")).json()["score"] == \
        made.json()["scores"][0]["score"]


def test_callers_are_scored_apart(client, serve_app):
    """Two keys' single-transaction requests for the same customer and terminal, sent together (so
    the ingress batches them into one model call): each score and its reasons equal that request
    scored alone: no caller's transaction is history for another's."""
    import asyncio

    base = {**TX, "customer_id": "shared-cust", "terminal_id": "shared-term"}
    txs = [{**base, "transaction_id": f"apart-{i}", "amount": 50.0 + 700.0 * i,
            "timestamp": f"2024-05-01T12:{10 + i}:00Z"} for i in range(12)]
    alone = [client.post("/v1/fraud/score", json=t, headers=key(serve_app, "all")).json()["scores"][0] for t in txs]
    sum0, count0 = _fraud_batch_metric(client)

    async def fire():
        async with httpx.AsyncClient(base_url=serve_app.url, timeout=60) as c:
            return await asyncio.gather(*[c.post("/v1/fraud/score", json=t,
                                                 headers=key(serve_app, "all" if i % 2 else "other"))
                                          for i, t in enumerate(txs)])

    together = [r.json()["scores"][0] for r in asyncio.run(fire())]
    sum1, count1 = _fraud_batch_metric(client)
    assert (sum1 - sum0) / (count1 - count0) > 1.0  # they did share model batches
    for a, b in zip(alone, together):
        assert b["score"] == pytest.approx(a["score"], abs=1e-6)
        assert b["reasons"] == a["reasons"]


def test_401_without_or_with_unknown_key(client):
    assert client.post("/v1/fraud/score", json=TX).status_code == 401
    r = client.post("/v1/fraud/score", json=TX, headers={"X-API-Key": "not-a-key"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "ApiKey"
    assert client.get("/v1/results/stored-tx-1").status_code == 401


def test_403_for_a_key_without_the_scope(client, serve_app):
    r = client.post("/v1/reports/summarize", json={"text": REPORT_TEXT}, headers=key(serve_app, "fraud"))
    assert r.status_code == 403 and "reports:summarize" in r.json()["detail"]
    assert client.get("/v1/results/stored-tx-1", headers=key(serve_app, "fraud")).status_code == 403


def test_413_before_parsing(client, serve_app):
    big = b'{"text": "' + b"a" * 300_000 + b'"}'
    r = client.post("/v1/reports/summarize", content=big, headers={**key(serve_app, "all"),
                                                                   "Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit counts the streamed body
        for _ in range(30):
            yield b"x" * 10_000

    r = client.post("/v1/reports/summarize", content=chunks(), headers=key(serve_app, "all"))
    assert r.status_code == 413


def test_422_field_level_without_echoing_input(client, serve_app):
    bad = {**TX, "amount": -5, "customer_id": CARD_NUMBER}
    r = client.post("/v1/fraud/score", json=bad, headers=key(serve_app, "all"))
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["detail"]]
    assert any("amount" in loc for loc in locs)
    assert CARD_NUMBER not in r.text
    r = client.post("/v1/reports/summarize", json={"text": "x", "report": {"report_id": "a", "domain": "finance",
                                                                            "text": "y"}}, headers=key(serve_app, "all"))
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"  # oneOf: text or report, not both
    r = client.post("/v1/fraud/score", content=b"{not json", headers={**key(serve_app, "all"),
                                                                      "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    r = client.post("/v1/fraud/score", json={**TX, "lon": False}, headers=key(serve_app, "all"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "lon"]  # strict: no bool -> number


def test_429_with_retry_after(client, serve_app):
    codes = [client.post("/v1/fraud/score", json=TX, headers=key(serve_app, "limited")) for _ in range(5)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]
    limited = codes[3]
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # another key is not affected
    assert client.post("/v1/fraud/score", json=TX, headers=key(serve_app, "fraud")).status_code == 200


def test_cors_off_by_default(client):
    r = client.options("/v1/fraud/score", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_metrics_and_openapi(client, serve_app):
    client.post("/v1/fraud/score", json=TX, headers=key(serve_app, "all"))
    text = client.get("/metrics").text
    assert 'argus_http_requests_total{method="POST",route="/v1/fraud/score",status="200"}' in text
    assert 'status="401"' in text and 'status="413"' in text
    assert "argus_fraud_score_bucket" in text and 'argus_model_batch_size_count{model="fraud"}' in text
    assert 'argus_model_results_total{model="fraud",version="fraud-' in text  # which model version answered
    spec = client.get("/openapi.json").json()
    assert {"/v1/fraud/score", "/v1/reports/summarize", "/v1/results/{result_id}", "/healthz"} <= set(spec["paths"])
    examples = spec["paths"]["/v1/fraud/score"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert {"one", "with_history", "batch"} <= set(examples)
    assert client.get("/docs").status_code == 200


def test_logs_hold_no_document_text_or_card_data(client, serve_app):
    client.post("/v1/reports/summarize", json={"text": REPORT_TEXT}, headers=key(serve_app, "all"))
    client.post("/v1/fraud/score", json={**TX, "customer_id": CARD_NUMBER, "amount": -1}, headers=key(serve_app, "all"))
    client.post("/v1/fraud/score", json={**TX, "terminal_id": CARD_NUMBER}, headers=key(serve_app, "all"))
    time.sleep(1.0)  # log files are flushed by the replicas
    logs = serve_app.log_text()
    assert "/v1/fraud/score -> 422" in logs  # our log line for the bad request is there...
    assert "ZEBRAMARKER" not in logs and CARD_NUMBER not in logs and "cust-SECRET-9" not in logs  # ...its data not
    assert serve_app.keys["all"] not in logs  # plain keys never; their sha256 digests are config, not secrets


def test_the_review_page_is_served_through_serve(client):
    """The analysts' page and its files through the Serve proxy, under the root and under another
    app's route prefix (the page asks for its files and the API by relative URLs)."""
    for prefix in ("", "/broken"):
        page = client.get(f"{prefix}/review")
        assert page.status_code == 200 and 'src="review/app.js"' in page.text, (prefix, page.status_code)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        js = client.get(f"{prefix}/review/app.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert '"v1/alerts' in js.text  # relative: the same prefix as the page
