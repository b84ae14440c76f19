"""The review loop's REST routes without Ray (the Ingress FastAPI app over httpx's ASGI transport,
a real store on PostgreSQL and SQLite): scope (403, before the body is read), tenant isolation (404,
byte for byte an unknown id), queue order and keyset paging, strict bodies, and property tests that
no body or query, however random, huge, deep or malformed, gets a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contracts import MAX_NOTE_CHARS
from pipelines.store import Store
from services.ingress import IngressCore, create_api
from services.security import hash_key
from tests.test_alert_review import alert, seed
from tests.test_rest_contract import FakeSummarizer, LocalHandle, call

pytestmark = pytest.mark.integration

KEYS = {"acme": "rk-acme", "globex": "rk-globex", "admin": "rk-admin", "fraud": "rk-fraud", "reader": "rk-reader"}


class NoModel:
    async def ready(self):
        return {"state": "ready", "model_version": "none"}


def make_app(store_url: str, **config):
    keys = {hash_key(KEYS["acme"]): {"scopes": ["alerts:review", "results:read"], "tenant": "acme"},
            hash_key(KEYS["globex"]): {"scopes": ["alerts:review"], "tenant": "globex"},
            hash_key(KEYS["admin"]): {"scopes": ["alerts:review", "results:admin"], "tenant": "ops"},
            hash_key(KEYS["fraud"]): ["fraud:score"],
            hash_key(KEYS["reader"]): {"scopes": ["results:read", "results:admin"], "tenant": "acme"}}
    core = IngressCore(LocalHandle(NoModel()), LocalHandle(FakeSummarizer()),
                       {"api_key_hashes": keys, "store_url": store_url, "failure_rate_limit_per_minute": 1_000_000,
                        **config})
    api = create_api(core)
    api.state.core = core
    return api


def req(method, path, key, body=None):
    return (method, path, KEYS.get(key, key), body)


@pytest.fixture
def app(store_url):
    with Store.from_url(store_url) as store:
        store.create_schema()
        seed(store, [alert(1, 0.9), alert(2, 0.8), alert(3, 0.8), alert(4, 0.7)], owner="acme")
        seed(store, [alert(5, 0.99)], owner="globex")
        seed(store, [alert(6, 0.97)])  # the stream's
    return make_app(store_url)


def ids(r) -> list[str]:
    return [a["transaction_id"] for a in r.json()["alerts"]]


def test_queue_order_and_keyset_paging(app):
    first, second, last, admin = call(app, [req("GET", "/v1/alerts?limit=2", "acme"),
                                            req("GET", "/v1/alerts?limit=2&after=a2", "acme"),
                                            req("GET", "/v1/alerts?limit=2&after=a3", "acme"),
                                            req("GET", "/v1/alerts", "admin")])
    assert first.status_code == 200, first.text
    assert ids(first) == ["a1", "a2"] and first.json()["next_after"] == "a2"
    assert ids(second) == ["a3", "a4"] and ids(last) == ["a4"] and last.json()["next_after"] is None
    a = first.json()["alerts"][0]
    assert (a["score"], a["model_version"], a["customer_id"], a["terminal_id"], a["amount"]) == (0.9, "fraud-m1", "c1", "k1", 101.0)
    assert a["reasons"][0]["feature"] == "amount" and "owner" not in a
    assert ids(admin) == ["a5", "a6", "a1", "a2", "a3", "a4"]  # results:admin: every tenant's and the stream's


def test_dispose_then_the_queue_moves_on(app, store_url):
    done, again, queue = call(app, [
        req("POST", "/v1/alerts/a1/disposition", "acme", {"disposition": "fraud", "note": "card reported stolen"}),
        req("POST", "/v1/alerts/a1/disposition", "acme", {"disposition": "fraud", "note": "card reported stolen"}),
        req("GET", "/v1/alerts", "acme")])
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["transaction_id"], body["disposition"], body["disposed_by"], body["note"], body["customer_id"]) == \
        ("a1", "fraud", "acme", "card reported stolen", "c1")
    assert again.status_code == 200 and ids(queue) == ["a2", "a3", "a4"]
    with Store.from_url(store_url) as store:
        assert store.count("alert_dispositions") == 1 and store.get_disposition("a1")["disposed_by"] == "acme"
    admin = call(app, [req("POST", "/v1/alerts/a6/disposition", "admin", {"disposition": "legitimate"})])[0]
    assert admin.status_code == 200 and admin.json()["disposed_by"] == "ops" and admin.json()["note"] is None


def test_other_tenants_alerts_are_404_like_unknown_ones(app, store_url):
    body = {"disposition": "fraud"}
    missing, theirs, stream, cursor, cursor_missing = call(app, [
        req("POST", "/v1/alerts/never/disposition", "globex", body),
        req("POST", "/v1/alerts/a1/disposition", "globex", body),
        req("POST", "/v1/alerts/a6/disposition", "globex", body),
        req("GET", "/v1/alerts?after=a1", "globex"),
        req("GET", "/v1/alerts?after=never", "globex")])
    assert missing.status_code == 404 and missing.json() == {"code": "not_found", "detail": "no alert with this id"}
    assert (theirs.status_code, theirs.content) == (404, missing.content)
    assert (stream.status_code, stream.content) == (404, missing.content)
    assert (cursor.status_code, cursor.content) == (cursor_missing.status_code, cursor_missing.content) and cursor.status_code == 404
    with Store.from_url(store_url) as store:
        assert store.count("alert_dispositions") == 0
    assert ids(call(app, [req("GET", "/v1/alerts", "globex")])[0]) == ["a5"]


def test_scope_is_checked_before_the_body(app):
    no_key, fraud, reader, fraud_bad_body = call(app, [
        req("GET", "/v1/alerts", None),
        req("GET", "/v1/alerts", "fraud"),
        req("POST", "/v1/alerts/a1/disposition", "reader", {"disposition": "fraud"}),
        req("POST", "/v1/alerts/a1/disposition", "fraud", b"{not json")])
    assert no_key.status_code == 401
    assert fraud.status_code == 403 and fraud.json() == {"code": "forbidden", "detail": "this API key lacks the scope alerts:review"}
    assert reader.status_code == 403  # results:admin alone does not review
    assert fraud_bad_body.status_code == 403  # not 422: the body was never read


def test_bad_bodies_and_queries_are_422(app):
    bad = [{"disposition": "Fraud"}, {"disposition": "fraud", "note": "a\nb"}, {"disposition": "fraud", "extra": 1},
           {"disposition": "fraud", "note": "x" * (MAX_NOTE_CHARS + 1)}, {"disposition": "fraud", "note": 5}, {},
           {"disposition": "fraud", "disposed_by": "someone-else"}, [], "fraud"]
    answers = call(app, [req("POST", "/v1/alerts/a1/disposition", "acme", b) for b in bad]
                   + [req("POST", "/v1/alerts/a1/disposition", "acme", b"{not json"),
                      req("GET", "/v1/alerts?limit=0", "acme"), req("GET", "/v1/alerts?limit=201", "acme"),
                      req("GET", "/v1/alerts?limit=x", "acme"), req("GET", "/v1/alerts?after=", "acme"),
                      req("GET", "/v1/alerts?after=" + "x" * 129, "acme"),
                      req("GET", "/v1/alerts/" + "x" * 129 + "/disposition", "acme")])
    for r in answers[:-1]:
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
    assert answers[-1].status_code == 405  # GET on the disposition route
    assert "someone-else" not in answers[6].text  # the input is never echoed
    # a valid note at the limit passes; the reviewer is the key's tenant, never the body's
    ok = call(app, [req("POST", "/v1/alerts/a2/disposition", "acme", {"disposition": "unsure", "note": "y" * MAX_NOTE_CHARS})])[0]
    assert ok.status_code == 200 and ok.json()["disposed_by"] == "acme"


def test_rate_limited_per_key(store_url):
    app = make_app(store_url, key_rate_limits={hash_key(KEYS["acme"]): 2})
    answers = call(app, [req("GET", "/v1/alerts", "acme") for _ in range(3)])
    assert [r.status_code for r in answers[:2]] == [200, 200] and answers[2].status_code == 429
    assert int(answers[2].headers["Retry-After"]) >= 1


def test_store_down_is_503_with_nothing_internal(tmp_path):
    app = make_app("postgresql+psycopg://argus:pw-secret@127.0.0.1:1/argus")
    for r in call(app, [req("GET", "/v1/alerts", "acme"), req("POST", "/v1/alerts/a1/disposition", "acme", {"disposition": "fraud"})]):
        assert r.status_code == 503 and r.json() == {"code": "store_unavailable", "detail": "the results store is unavailable"}


def test_openapi_documents_the_new_routes(app):
    spec = app.openapi()
    get = spec["paths"]["/v1/alerts"]["get"]
    post = spec["paths"]["/v1/alerts/{transaction_id}/disposition"]["post"]
    assert {"200", "401", "403", "404", "422", "429", "503"} <= set(get["responses"])
    assert {"200", "401", "403", "404", "413", "422", "429", "503"} <= set(post["responses"])
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/DispositionIn")
    body = spec["components"]["schemas"]["DispositionIn"]
    assert body["additionalProperties"] is False and body["properties"]["note"]["anyOf"][0]["maxLength"] == MAX_NOTE_CHARS
    assert "not" in body["properties"]["note"]["anyOf"][0]  # no control characters, said in the schema
    twin = spec["paths"]["/v1/alerts/disposition"]["post"]
    assert set(post["responses"]) <= set(twin["responses"])
    assert twin["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AlertDispositionIn")
    by_body = spec["components"]["schemas"]["AlertDispositionIn"]
    assert by_body["additionalProperties"] is False and {"transaction_id", "disposition"} <= set(by_body["required"])
    assert by_body["properties"]["transaction_id"]["maxLength"] == 128 and "not" in by_body["properties"]["transaction_id"]
    history = spec["paths"]["/v1/alerts/history"]["get"]
    assert {"200", "401", "403", "404", "422", "429", "503"} <= set(history["responses"])
    assert {(p["name"], p["in"], p["required"]) for p in history["parameters"]} == {("transaction_id", "query", True),
                                                                                   ("limit", "query", False)}


# --- every id, through the twins that carry it in the body or the query ----------------------------

# ids a URL path cannot carry (a "/" splits the segment, "." and ".." are dot segments a browser
# resolves, "%2F" is decoded before routing) and others that are awkward in a query string
HOSTILE_IDS = ["a/b", "/", "//", ".", "..", "../a1", "./", "%2F", "a%2Fb", "%2e%2e", "?x=1#y", "a b+c&d=e;f",
               "ünïcødé-∑-🦊", "\\u0000", "x" * 128, "/v1/alerts", "null"]


def hostile_alert(tid: str, score: float, customer: str = "c-h"):
    s, tx = alert(0, score, customer=customer)
    return s.model_copy(update={"transaction_id": tid}), tx.model_copy(update={"transaction_id": tid})


def by_body(tid: str, key: str, disposition: str = "fraud", **extra):
    return req("POST", "/v1/alerts/disposition", key, {"transaction_id": tid, "disposition": disposition, **extra})


def by_query(tid: str, key: str, **params):
    return req("GET", "/v1/alerts/history?" + urlencode({"transaction_id": tid, **params}, quote_via=quote), key)


def test_every_id_is_disposed_and_its_history_read_through_the_twins(app, store_url):
    with Store.from_url(store_url) as store:
        seed(store, [hostile_alert(tid, 0.5 - i / 100) for i, tid in enumerate(HOSTILE_IDS)], owner="acme")
    unknown = call(app, [by_body("never/seen", "globex"), by_query("never/seen", "globex")])
    assert [r.status_code for r in unknown] == [404, 404]
    # another tenant: byte for byte the answer for an unknown id, and nothing stored
    theirs = call(app, [r for tid in HOSTILE_IDS for r in (by_body(tid, "globex"), by_query(tid, "globex"))])
    assert [(r.status_code, r.content) for r in theirs] == [(404, unknown[0].content), (404, unknown[1].content)] * len(HOSTILE_IDS)
    with Store.from_url(store_url) as store:
        assert store.count("alert_dispositions") == 0

    answers = call(app, [r for tid in HOSTILE_IDS for r in (
        by_body(tid, "acme", "legitimate", note="checked: " + tid[:50]), by_query(tid, "acme", limit=5))])
    for tid, done, history in zip(HOSTILE_IDS, answers[::2], answers[1::2]):
        assert done.status_code == 200, (tid, done.text)
        assert (done.json()["transaction_id"], done.json()["disposition"], done.json()["disposed_by"]) == (tid, "legitimate", "acme")
        assert history.status_code == 200, (tid, history.text)
        h = history.json()
        assert h["transaction_id"] == tid and tid not in [r["transaction_id"] for r in h["customer"] + h["terminal"]]
    with Store.from_url(store_url) as store:
        for tid in HOSTILE_IDS:
            d = store.get_disposition(tid)
            assert (d["disposition"], d["disposed_by"], d["note"]) == ("legitimate", "acme", "checked: " + tid[:50])
    assert ids(call(app, [req("GET", "/v1/alerts", "acme")])[0]) == ["a1", "a2", "a3", "a4"]  # the queue moved on
    # a disposed hostile alert shows its verdict in a later alert's history
    later = call(app, [by_query("a1", "admin")])[0]  # a1: customer c1; the hostile ones are c-h, so none
    assert later.status_code == 200 and later.json()["transaction_id"] == "a1"


def test_the_twins_keep_the_path_routes_answers(app):
    path, body, path_history, query_history = call(app, [
        req("POST", "/v1/alerts/a1/disposition", "acme", {"disposition": "unsure", "note": "n"}),
        by_body("a1", "acme", "unsure", note="n"),
        req("GET", "/v1/alerts/a2/history?limit=3", "acme"), by_query("a2", "acme", limit=3)])
    assert path.status_code == body.status_code == 200
    assert {k: v for k, v in path.json().items() if k != "disposed_at"} == {k: v for k, v in body.json().items() if k != "disposed_at"}
    assert (path_history.status_code, path_history.json()) == (query_history.status_code, query_history.json())


def test_the_twins_validate_strictly(app, store_url):
    bad_bodies = [{"disposition": "fraud"},  # no id
                  {"transaction_id": "a1", "disposition": "fraud", "extra": 1},
                  {"transaction_id": "a1", "disposition": "fraud", "disposed_by": "someone-else"},
                  {"transaction_id": "", "disposition": "fraud"}, {"transaction_id": "x" * 129, "disposition": "fraud"},
                  {"transaction_id": "a\n1", "disposition": "fraud"}, {"transaction_id": "a\u00851", "disposition": "fraud"},
                  {"transaction_id": 1, "disposition": "fraud"}, {"transaction_id": ["a1"], "disposition": "fraud"},
                  {"transaction_id": None, "disposition": "fraud"}, {"transaction_id": "a1", "disposition": "Fraud"},
                  {"transaction_id": "a1", "disposition": "fraud", "note": "a\nb"},
                  {"transaction_id": "a1", "disposition": "fraud", "note": "x" * (MAX_NOTE_CHARS + 1)}, [], "a1"]
    answers = call(app, [req("POST", "/v1/alerts/disposition", "acme", b) for b in bad_bodies]
                   + [req("POST", "/v1/alerts/disposition", "acme", b"{not json"),
                      req("GET", "/v1/alerts/history", "acme"), by_query("", "acme"), by_query("x" * 129, "acme"),
                      by_query("a1", "acme", limit=0), by_query("a1", "acme", limit=51), by_query("a1", "acme", limit="x")])
    for b, r in zip(bad_bodies + ["..."] * 7, answers):
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", (b, r.text)
        assert set(r.json()) == {"code", "detail"}
    assert "someone-else" not in answers[2].text and "x" * 129 not in answers[4].text  # the input is never echoed
    control = call(app, [by_query("a\x00b", "acme"), by_query("a\n1", "acme")])  # like the path route: no alert has it
    assert [r.status_code for r in control] == [404, 404]
    scope = call(app, [req("POST", "/v1/alerts/disposition", None, {"transaction_id": "a1", "disposition": "fraud"}),
                       req("POST", "/v1/alerts/disposition", "fraud", b"{not json"),
                       req("POST", "/v1/alerts/disposition", "reader", {"transaction_id": "a1", "disposition": "fraud"}),
                       by_query("a1", None), by_query("a1", "fraud"), by_query("a1", "reader")])
    assert [r.status_code for r in scope] == [401, 403, 403, 401, 403, 403]  # the body is never read without the scope
    with Store.from_url(store_url) as store:
        assert store.count("alert_dispositions") == 0


ids_any = st.one_of(st.sampled_from(HOSTILE_IDS),
                    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=128))


@pytest.fixture(scope="module")
def twin_app(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('twin') / 'a.db'}"
    with Store.from_url(url) as store:
        store.create_schema()
    app = make_app(url)
    app.state.url = url
    return app


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tid=ids_any, disposition=st.sampled_from(["fraud", "legitimate", "unsure"]))
def test_any_valid_id_round_trips_through_the_twins(twin_app, tid, disposition):
    with Store.from_url(twin_app.state.url) as store:
        seed(store, [hostile_alert(tid, 0.9)], owner="acme")
    theirs, unknown, done, history = call(twin_app, [
        by_body(tid, "globex", disposition), by_body(tid + "-unknown" if len(tid) < 120 else "unknown", "acme", disposition),
        by_body(tid, "acme", disposition), by_query(tid, "acme")])
    assert (theirs.status_code, theirs.content) == (404, unknown.content)
    assert done.status_code == 200, done.text
    assert (done.json()["transaction_id"], done.json()["disposition"]) == (tid, disposition)
    assert history.status_code == 200 and history.json()["transaction_id"] == tid, history.text
    with Store.from_url(twin_app.state.url) as store:
        assert store.get_disposition(tid)["disposition"] == disposition


# --- no 5xx, whatever comes in -------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                           max_leaves=30)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.dictionaries(st.sampled_from(["disposition", "note", "schema_version", "x"]),
                    st.one_of(st.sampled_from(["fraud", "legitimate", "unsure"]), json_values), max_size=4).map(
        lambda d: json.dumps(d, allow_nan=True).encode()),
    st.binary(max_size=2000),
    st.integers(100, 100_000).map(lambda n: b'{"note":' + b"[" * n + b"]" * n + b"}"),
    st.integers(1000, 150_000).map(lambda n: json.dumps({"disposition": "fraud", "note": "n" * n}).encode()),
)
ids_ = st.text(st.characters(codec="utf-8", exclude_characters="/?#%"), min_size=1, max_size=140)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'a.db'}"
    with Store.from_url(url) as store:
        store.create_schema()
        seed(store, [alert(i, 0.5 + i / 100) for i in range(5)], owner="acme")
    return make_app(url, max_request_bytes=100_000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tid=st.one_of(st.sampled_from(["a1", "a2"]), ids_), body=bodies)
def test_no_disposition_body_gets_a_5xx(fuzz_app, tid, body):
    r = call(fuzz_app, [req("POST", f"/v1/alerts/{quote(tid, safe='')}/disposition", "acme", body)])[0]
    assert r.status_code in (200, 404, 413, 422), (r.status_code, r.text[:300])
    assert set(r.json()) <= {"code", "detail", "transaction_id", "disposition", "disposed_by", "disposed_at", "note",
                             "customer_id", "terminal_id", "schema_version"}


twin_bodies = st.one_of(
    bodies,
    st.fixed_dictionaries({"transaction_id": st.one_of(st.sampled_from(["a1", "a2"] + HOSTILE_IDS), st.text(max_size=200), json_values),
                           "disposition": st.one_of(st.sampled_from(["fraud", "legitimate", "unsure"]), json_values)},
                          optional={"note": st.one_of(st.text(max_size=50), json_values), "x": json_values}).map(
        lambda d: json.dumps(d, allow_nan=True).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=twin_bodies, tid=st.one_of(st.sampled_from(HOSTILE_IDS), st.text(max_size=200)),
       limit=st.one_of(st.none(), st.integers(-5, 80), st.text(max_size=6)))
def test_no_twin_request_gets_a_5xx(fuzz_app, body, tid, limit):
    params = {"transaction_id": tid} if limit is None else {"transaction_id": tid, "limit": str(limit)}
    disposed, history = call(fuzz_app, [req("POST", "/v1/alerts/disposition", "acme", body),
                                        req("GET", "/v1/alerts/history?" + urlencode(params, quote_via=quote), "acme")])
    assert disposed.status_code in (200, 404, 413, 422), (disposed.status_code, disposed.text[:300])
    assert history.status_code in (200, 404, 422), (history.status_code, history.text[:300])
    assert set(history.json()) <= {"code", "detail", "transaction_id", "customer", "terminal"}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(limit=st.one_of(st.integers(-5, 300), st.text(max_size=10)), after=st.one_of(st.none(), ids_))
def test_no_queue_query_gets_a_5xx(fuzz_app, limit, after):
    params = {"limit": str(limit)}
    if after is not None:
        params["after"] = after
    import asyncio

    import httpx

    async def go():
        transport = httpx.ASGITransport(app=fuzz_app, client=("10.0.0.9", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://argus") as c:
            return await c.get("/v1/alerts", params=params, headers={"X-API-Key": KEYS["acme"]})

    r = asyncio.run(go())
    assert r.status_code in (200, 404, 422), (r.status_code, r.text[:300])


# --- the dispositions topic ----------------------------------------------------------------------

def test_a_rest_disposition_is_published_keyed_by_customer(kafka_broker, sqlite_url):
    import time

    from kafka import TopicPartition

    from pipelines.contracts import Disposition, decode
    from pipelines.kafka_io import make_consumer

    topic = kafka_broker.new_topic("dispositions")
    with Store.from_url(sqlite_url) as store:
        store.create_schema()
        seed(store, [alert(1, 0.9, customer="cust-rest")], owner="acme")
    app = make_app(sqlite_url, dispositions_bootstrap=kafka_broker.bootstrap, dispositions_topic=topic)
    r = call(app, [req("POST", "/v1/alerts/a1/disposition", "acme", {"disposition": "fraud", "note": "confirmed"})])[0]
    assert r.status_code == 200, r.text
    consumer = make_consumer(kafka_broker.settings, None, None, consumer_timeout_ms=2000)
    parts = [TopicPartition(topic, p) for p in range(kafka_broker.topics.partitions)]
    consumer.assign(parts)
    deadline, got = time.monotonic() + 30, []
    while not got and time.monotonic() < deadline:  # published in the background after the answer
        consumer.seek_to_beginning(*parts)
        got = list(consumer)
    consumer.close()
    assert len(got) == 1 and got[0].key == b"cust-rest"
    d = decode(Disposition, got[0].value)
    assert (d.transaction_id, d.disposition.value, d.disposed_by, d.note) == ("a1", "fraud", "acme", "confirmed")


def test_an_unreachable_broker_never_fails_a_disposition(sqlite_url):
    import time

    with Store.from_url(sqlite_url) as store:
        store.create_schema()
        seed(store, [alert(1, 0.9)], owner="acme")
    app = make_app(sqlite_url, dispositions_bootstrap="127.0.0.1:1")
    r = call(app, [req("POST", "/v1/alerts/a1/disposition", "acme", {"disposition": "legitimate"})])[0]
    assert r.status_code == 200 and r.json()["disposition"] == "legitimate"  # answered before the broker timed out
    app.state.core._publisher.shutdown(wait=True)
    assert time.monotonic() < app.state.core._publish_paused_until  # the failure pauses publishing a while
    with Store.from_url(sqlite_url) as store:
        assert store.get_disposition("a1")["disposition"] == "legitimate"
