"""The review loop's data path without Ray: alert dispositions in the store (PostgreSQL and SQLite),
the `Disposition` contract, the dispositions topic and `argus alerts list|dispose`."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from pipelines.contracts import MAX_NOTE_CHARS, ContractError, Disposition, FraudScore, Reason, Transaction, decode
from pipelines.store import SCHEMA_VERSION, Store, _migrate, score_row

pytestmark = pytest.mark.integration


def alert(i: int, score: float, customer: str = "c1") -> tuple[FraudScore, Transaction]:
    s = FraudScore(transaction_id=f"a{i}", score=score, decision="decline", model_version="fraud-m1",
                   reasons=[Reason(source="current", feature="amount", weight=0.4, detail="large")])
    tx = Transaction(transaction_id=f"a{i}", timestamp="2024-05-01T12:00:00Z", customer_id=customer,
                     terminal_id=f"k{i % 3}", amount=100.0 + i)
    return s, tx


def seed(store: Store, scored: list[tuple[FraudScore, Transaction]], owner: str | None = None) -> None:
    """Scores (with their transaction's customer and terminal) and alerts, as a stream (no owner)
    or a REST tenant writes them."""
    if owner is None:
        store.write_batch(scores=[score_row(s, tx) for s, tx in scored], alerts=[s for s, _ in scored])
    else:
        store.write_owned(owner, scores=scored)
        store.insert_alerts([s for s, _ in scored])


# --- store ----------------------------------------------------------------------------------------

def test_open_queue_by_score_with_keyset_paging(store: Store):
    scores = [0.9, 0.7, 0.95, 0.7, 0.6, 0.8, 0.7]
    seed(store, [alert(i, s) for i, s in enumerate(scores)])
    page1 = store.open_alerts(limit=3)
    assert [r["transaction_id"] for r in page1] == ["a2", "a0", "a5"]
    first = page1[0]
    assert (first["score"], first["model_version"], first["customer_id"], first["terminal_id"]) == (0.95, "fraud-m1", "c1", "k2")
    assert first["reasons"][0]["feature"] == "amount" and first["amount"] == 102.0
    assert first["created_at"].tzinfo is not None and first["timestamp"] == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    page2 = store.open_alerts(limit=3, after="a5")
    assert [r["transaction_id"] for r in page2] == ["a1", "a3", "a6"]  # equal scores: by transaction_id
    store.dispose("a3", "fraud", "ann")
    assert [r["transaction_id"] for r in store.open_alerts(limit=3, after="a1")] == ["a6", "a4"]
    # the cursor may itself be disposed meanwhile: paging goes on from its place
    store.dispose("a1", "legitimate", "ann")
    assert [r["transaction_id"] for r in store.open_alerts(limit=3, after="a1")] == ["a6", "a4"]
    assert store.open_alerts(after="never") is None
    assert [r["transaction_id"] for r in store.open_alerts(limit=100)] == ["a2", "a0", "a5", "a6", "a4"]


def test_dispose_overwrites_one_row_and_keeps_the_alert(store: Store):
    seed(store, [alert(1, 0.9, customer="cust-7")])
    got = store.dispose("a1", "unsure", "ann", note="call the customer")
    assert isinstance(got, Disposition)
    assert (got.disposition.value, got.disposed_by, got.note, got.customer_id, got.terminal_id) == \
        ("unsure", "ann", "call the customer", "cust-7", "k1")
    again = store.dispose("a1", "unsure", "ann", note="call the customer")
    assert again.disposition == got.disposition and store.count("alert_dispositions") == 1  # same twice: one row
    later = store.dispose("a1", "fraud", "bob")
    row = store.get_disposition("a1")
    assert (row["disposition"], row["disposed_by"], row["note"]) == ("fraud", "bob", None)
    assert row["disposed_at"] == later.disposed_at and store.count("alert_dispositions") == 1
    assert store.count("alerts") == 1 and store.open_alerts() == []
    # a stream replaying the batch that raised the alert neither duplicates nor re-opens it
    seed(store, [alert(1, 0.9, customer="cust-7")])
    assert store.count("alerts") == 1 and store.open_alerts() == [] and store.get_disposition("a1")["disposition"] == "fraud"


def test_dispose_unknown_or_invalid(store: Store):
    seed(store, [alert(1, 0.9)])
    assert store.dispose("nope", "fraud", "ann") is None
    assert store.count("alert_dispositions") == 0
    for kwargs, reason in (({"disposition": "maybe"}, "disposition"), ({"note": "a\nb"}, "control"),
                           ({"note": "x" * (MAX_NOTE_CHARS + 1)}, "note"), ({"disposed_by": ""}, "disposed_by"),
                           ({"disposed_by": "x" * 65}, "disposed_by")):
        args = {"disposition": "fraud", "disposed_by": "ann", **kwargs}
        with pytest.raises(ContractError, match=reason):
            store.dispose("a1", args["disposition"], args["disposed_by"], note=args.get("note"))
    assert store.count("alert_dispositions") == 0


def test_tenants_see_and_dispose_only_their_alerts(store: Store):
    seed(store, [alert(1, 0.9), alert(2, 0.8)], owner="acme")
    seed(store, [alert(3, 0.99)], owner="globex")
    seed(store, [alert(4, 0.97)])  # the stream's: no tenant
    assert [r["transaction_id"] for r in store.open_alerts(tenant="acme")] == ["a1", "a2"]
    assert [r["transaction_id"] for r in store.open_alerts(tenant="globex")] == ["a3"]
    assert [r["transaction_id"] for r in store.open_alerts()] == ["a3", "a4", "a1", "a2"]  # admin: all
    assert store.open_alerts(tenant="acme", after="a3") is None  # another tenant's id is no cursor
    assert store.dispose("a3", "fraud", "acme", tenant="acme") is None
    assert store.dispose("a4", "fraud", "acme", tenant="acme") is None
    assert store.count("alert_dispositions") == 0
    assert store.dispose("a3", "fraud", "globex", tenant="globex").disposed_by == "globex"


def test_upgrade_from_v6_keeps_alerts(store_url: str):
    store = Store.from_url(store_url)
    with store.engine.begin() as conn:
        assert _migrate(conn, target=6) == 6
    assert "alert_dispositions" not in inspect(store.engine).get_table_names()
    seed(store, [alert(1, 0.9)])  # a v6-era alert
    assert store.create_schema() == SCHEMA_VERSION
    assert store.create_schema() == SCHEMA_VERSION
    assert "alert_dispositions" in inspect(store.engine).get_table_names()
    assert "alerts_queue_idx" in {i["name"] for i in inspect(store.engine).get_indexes("alerts")}
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == SCHEMA_VERSION
    assert [r["transaction_id"] for r in store.open_alerts()] == ["a1"]
    assert store.dispose("a1", "fraud", "ann").customer_id == "c1"
    store.close()


def _upgrade_and_dispose(url: str, who: str, go, errors) -> None:
    try:
        store = Store.from_url(url)
        go.wait(30)
        store.create_schema()
        for i in range(40):
            store.dispose(f"a{i % 8}", "fraud" if i % 2 else "legitimate", who)
        store.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_upgrade_and_dispose_at_once(store_url: str):
    store = Store.from_url(store_url)
    with store.engine.begin() as conn:
        _migrate(conn, target=6)
    seed(store, [alert(i, 0.5 + i / 100) for i in range(8)])
    ctx = mp.get_context("fork")
    go, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_upgrade_and_dispose, args=(store_url, who, go, errors)) for who in ("ann", "bob")]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs) and errors.empty(), errors.get() if not errors.empty() else None
    assert store.schema_version() == SCHEMA_VERSION and store.count("alert_dispositions") == 8 and store.open_alerts() == []
    store.close()


# --- the contract ---------------------------------------------------------------------------------

GOOD = {"transaction_id": "t1", "disposition": "fraud", "disposed_by": "ann", "disposed_at": "2024-05-01T12:00:00Z",
        "note": "stolen card", "customer_id": "c1", "terminal_id": "k1"}


def test_disposition_round_trip_and_reasons():
    d = decode(Disposition, Disposition(**GOOD).to_json())
    assert d.disposition.value == "fraud" and d.schema_version == 1 and d.kafka_key == "c1"
    assert Disposition(**{**GOOD, "customer_id": None}).kafka_key == "t1"
    for raw, reason in (({**GOOD, "disposition": "Fraud"}, "disposition"), ({**GOOD, "note": "x\u2028"}, "note"),
                        ({**GOOD, "extra": 1}, "extra"), ({**GOOD, "schema_version": 2}, "schema_version"),
                        ({k: v for k, v in GOOD.items() if k != "disposed_by"}, "disposed_by: Field required"),
                        ({**GOOD, "disposed_at": "3000-01-01T00:00:00Z"}, "disposed_at")):
        with pytest.raises(ContractError, match=reason):
            decode(Disposition, json.dumps(raw).encode())


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(100, 20_000).map(lambda n: ("[" * n + "]" * n).encode()),
    st.dictionaries(st.sampled_from(sorted(GOOD) + ["schema_version", "x"]), json_values, max_size=8).map(
        lambda d: json.dumps({**GOOD, **d}, allow_nan=True).encode()),
    st.tuples(st.sampled_from(sorted(GOOD)), st.text(min_size=0, max_size=3000)).map(
        lambda kv: json.dumps({**GOOD, kv[0]: kv[1]}).encode()),
))
def test_decode_disposition_never_raises_anything_but_a_one_line_reason(raw):
    try:
        d = decode(Disposition, raw)
    except ContractError as exc:
        assert exc.reason and "\n" not in exc.reason and len(exc.reason) <= 1000
    else:
        assert d.note is None or (len(d.note) <= MAX_NOTE_CHARS and "\n" not in d.note)


# --- the topic and the CLI ------------------------------------------------------------------------

def _argus(*args: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "from services.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_cli_list_and_dispose_without_a_broker(sqlite_url: str):
    with Store.from_url(sqlite_url) as store:
        store.create_schema()
        seed(store, [alert(1, 0.9), alert(2, 0.95, customer="[red]c2")])
    listed = _argus("alerts", "list", "--url", sqlite_url, "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.index("a2") < listed.stdout.index("a1") and "[red]c2" in listed.stdout and "0.950" in listed.stdout
    no_broker = {"ARGUS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = _argus("alerts", "dispose", "a2", "--as", "fraud", "--by", "ann", "--note", "card stolen", "--url", sqlite_url,
                  "--timeout", "1", env=no_broker)
    assert done.returncode == 0, done.stderr
    said = [ln for ln in done.stdout.splitlines() if "not published" in ln]
    assert len(said) == 1 and "127.0.0.1:1" in said[0]  # one line, and it is still stored
    with Store.from_url(sqlite_url) as store:
        assert store.get_disposition("a2")["note"] == "card stolen"
    listed = _argus("alerts", "list", "--url", sqlite_url)
    assert "a1" in listed.stdout and "a2" not in listed.stdout
    for args, message in ((("nope", "--as", "fraud", "--by", "ann"), "no alert"),
                          (("a1", "--as", "maybe", "--by", "ann"), "invalid disposition"),
                          (("a1", "--as", "fraud", "--by", "ann", "--note", "a\tb"), "control characters")):
        bad = _argus("alerts", "dispose", *args, "--url", sqlite_url, "--no-publish")
        assert bad.returncode != 0 and message in bad.stderr
    with Store.from_url(sqlite_url) as store:
        assert store.get_disposition("a1") is None


def test_cli_publishes_on_the_customers_partition(kafka_broker, sqlite_url: str):
    from kafka import TopicPartition

    from pipelines.kafka_io import make_consumer, make_producer

    settings = kafka_broker.settings
    assert settings.topics.dispositions in settings.topics.all()
    with Store.from_url(sqlite_url) as store:
        store.create_schema()
        seed(store, [alert(1, 0.9, customer="cust-42")])
    producer = make_producer(settings)  # where the simulator puts this customer's transactions
    tx_meta = producer.send(settings.topics.transactions, key="cust-42", value=b"{}").get(timeout=10)
    producer.close()
    done = _argus("alerts", "dispose", "a1", "--as", "legitimate", "--by", "ann", "--url", sqlite_url,
                  "--bootstrap", kafka_broker.bootstrap)
    assert done.returncode == 0 and "published" in done.stdout, done.stdout + done.stderr
    consumer = make_consumer(settings, None, None, consumer_timeout_ms=5000)
    part = TopicPartition(settings.topics.dispositions, tx_meta.partition)
    consumer.assign([part])
    consumer.seek_to_beginning(part)
    records = [r for r in consumer if r.key == b"cust-42"]
    consumer.close()
    assert records, "the disposition is not on the partition of the customer's transactions"
    got = decode(Disposition, records[-1].value)
    assert (got.transaction_id, got.disposition.value, got.disposed_by, got.customer_id) == ("a1", "legitimate", "ann", "cust-42")
