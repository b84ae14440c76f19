"""The results store on real PostgreSQL and real SQLite (the `store` fixture runs each test on both)."""

from __future__ import annotations

import multiprocessing as mp
import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import inspect, text

from pipelines.contracts import FraudScore, KeyFact, Reason, ReportSummary, Span, SummarySentence, Transaction
from pipelines.errors import StoreError
from pipelines.store import SCHEMA_VERSION, DeadLetter, Store, _migrate, score_row

pytestmark = pytest.mark.integration


def fs(i: int, score: float = 0.7, decision: str = "review", version: str = "m1") -> FraudScore:
    return FraudScore(transaction_id=f"t{i}", score=score, decision=decision, model_version=version,
                      reasons=[Reason(source="current", feature="amount", weight=0.4, detail="large")])


def summary(report_id: str, version: str, text_: str = "Revenue rose 5%.") -> ReportSummary:
    return ReportSummary(report_id=report_id, domain="finance", summary=text_, model_version=version,
                         sentences=[SummarySentence(text=text_, spans=[Span(start=0, end=len(text_))])],
                         key_facts=[KeyFact(kind="figure", text="5%", spans=[Span(start=13, end=15)])],
                         faithfulness={"figures_supported": 1.0}, latency_ms=12.5)


def scalar(store: Store, sql: str):
    with store.engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_create_schema_is_idempotent(store: Store):
    assert store.create_schema() == SCHEMA_VERSION
    assert store.create_schema() == SCHEMA_VERSION
    assert store.schema_version() == SCHEMA_VERSION
    assert scalar(store, "SELECT count(*) FROM schema_version") == SCHEMA_VERSION  # one row per migration
    assert store.stats() == {"fraud_scores": 0, "alerts": 0, "report_summaries": 0, "dead_letters": 0, "runs": 0,
                             "stream_positions": 0, "alert_dispositions": 0, "model_registry": 0,
                             "model_registry_events": 0}


def test_create_schema_upgrades_from_v1(store_url: str):
    store = Store.from_url(store_url)
    with store.engine.begin() as conn:
        assert _migrate(conn, target=1) == 1
    cols = {c["name"] for c in inspect(store.engine).get_columns("fraud_scores")}
    assert "amount" not in cols and store.schema_version() == 1
    with store.engine.begin() as conn:  # a v1-era row survives the upgrade
        conn.execute(text("INSERT INTO fraud_scores (transaction_id, score, decision, reasons, model_version, scored_at)"
                          " VALUES ('t1', 0.5, 'review', '[]', 'm1', CURRENT_TIMESTAMP)"))
    assert store.create_schema() == SCHEMA_VERSION
    assert {"amount", "payload_hash", "source_position", "owner"} <= {c["name"] for c in inspect(store.engine).get_columns("fraud_scores")}
    assert "content_hash" in {c["name"] for c in inspect(store.engine).get_columns("report_summaries")}
    assert {"stream_positions", "alert_dispositions"} <= set(inspect(store.engine).get_table_names())
    assert store.count("fraud_scores") == 1
    store.close()


def test_upgrade_to_v9_gives_old_state_snapshots_a_dispositions_offset(store_url: str):
    """A v8 store whose fraud_state_snapshots table (made by pipelines/fraud_state_store.py) has no
    dispositions_offset: v9 adds it, the old snapshot reads with None (the stream then reads the
    dispositions from the start) and new ones keep it. A store whose table was made with the column
    already upgrades too."""
    from sqlalchemy import MetaData, Table

    from pipelines.fraud_state_store import PartitionStateStore, fraud_state_snapshots

    store = Store.from_url(store_url)
    with store.engine.begin() as conn:
        assert _migrate(conn, target=8) == 8
        v8 = Table("fraud_state_snapshots", MetaData(), *[c._copy() for c in fraud_state_snapshots.columns
                                                          if c.name != "dispositions_offset"])
        v8.create(conn)
        conn.execute(v8.insert().values(stream="g/tx", partition=0, tx_offset=10, labels_offset=3, state=b"s0",
                                        created_at=datetime.now(timezone.utc)))
    assert store.create_schema() == SCHEMA_VERSION >= 9
    assert "dispositions_offset" in {c["name"] for c in inspect(store.engine).get_columns("fraud_state_snapshots")}
    snaps = PartitionStateStore(store, "g/tx")
    old = snaps.load(0)
    assert (old.tx_offset, old.labels_offset, old.dispositions_offset, old.state) == (10, 3, None, b"s0")
    snaps.save(1, 20, None, b"s1", dispositions_offset=7)
    assert snaps.load(1).dispositions_offset == 7
    # a store recorded at v8 whose table already has the column (made by the new fraud_state_store first)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM schema_version WHERE version >= 9"))
    assert store.create_schema() == SCHEMA_VERSION
    assert snaps.load(1).dispositions_offset == 7
    store.close()


HISTORY_SQL = ('SELECT transaction_id FROM fraud_scores WHERE {key} = :v AND transaction_id <> :tid AND "timestamp" <= :at '
               'ORDER BY "timestamp" DESC, transaction_id DESC LIMIT 20')  # Store.alert_history's query, per side


def test_upgrade_to_v10_indexes_the_alert_history(store_url: str):
    """A v9 store gets the two history indexes; its rows survive; the history query reads them (the
    plan names the index, on PostgreSQL with sequential scans priced out as on a large table)."""
    store = Store.from_url(store_url)
    with store.engine.begin() as conn:
        assert _migrate(conn, target=9) == 9
    store.write_batch(scores=[score_row(fs(i), Transaction(
        transaction_id=f"t{i}", timestamp=datetime(2024, 5, 1, i, tzinfo=timezone.utc), customer_id=f"c{i % 2}",
        terminal_id=f"k{i % 3}", amount=1.0 + i)) for i in range(6)])
    before = {i["name"] for i in inspect(store.engine).get_indexes("fraud_scores")}
    assert not {"fraud_scores_customer_history_idx", "fraud_scores_terminal_history_idx"} & before
    assert store.create_schema() == SCHEMA_VERSION >= 10
    indexes = {i["name"]: i["column_names"] for i in inspect(store.engine).get_indexes("fraud_scores")}
    assert indexes["fraud_scores_customer_history_idx"] == ["customer_id", "timestamp", "transaction_id"]
    assert indexes["fraud_scores_terminal_history_idx"] == ["terminal_id", "timestamp", "transaction_id"]
    assert store.count("fraud_scores") == 6
    at = datetime(2024, 5, 1, 4, tzinfo=timezone.utc)
    for key, index in (("customer_id", "fraud_scores_customer_history_idx"), ("terminal_id", "fraud_scores_terminal_history_idx")):
        with store.engine.begin() as conn:
            explain = "EXPLAIN QUERY PLAN " if store.engine.dialect.name == "sqlite" else "EXPLAIN "
            if store.engine.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(str(tuple(r)) for r in conn.execute(text(explain + HISTORY_SQL.format(key=key)),
                                                               {"v": "c0" if key == "customer_id" else "k0", "tid": "t4", "at": at}))
        assert index in plan, plan
    store.close()


@pytest.mark.parametrize("n", [3, 1200])  # executemany path and (on PostgreSQL) the COPY path
def test_upsert_scores_is_idempotent_and_updates(store: Store, n: int):
    rows = [fs(i) for i in range(n)]
    assert store.upsert_scores(rows) == n
    assert store.upsert_scores(rows) == n
    assert store.count("fraud_scores") == n
    store.upsert_scores([fs(1, score=0.95, decision="decline", version="m2")])
    got = store.get_result("t1")
    assert isinstance(got, FraudScore)
    assert (got.score, got.decision.value, got.model_version) == (0.95, "decline", "m2")
    assert got.reasons[0].feature == "amount" and got.scored_at.tzinfo is not None
    assert store.count("fraud_scores") == n


def test_duplicate_keys_in_one_batch_last_wins(store: Store):
    assert store.upsert_scores([fs(1, 0.1, "approve"), fs(1, 0.9, "decline")] * 300) == 1
    assert store.get_result("t1").score == 0.9


def test_score_row_keeps_transaction_context(store: Store):
    tx = Transaction(transaction_id="t1", timestamp="2018-04-01T00:00:31Z", customer_id="c9", terminal_id="k7",
                     amount=99.5)
    store.upsert_scores([score_row(fs(1), tx)])
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT customer_id, terminal_id, amount FROM fraud_scores")).one()
    assert tuple(row) == ("c9", "k7", 99.5)


def test_bad_score_row_is_a_store_error(store: Store):
    with pytest.raises(StoreError, match="unknown column"):
        store.upsert_scores([{**score_row(fs(1)), "colour": "red"}])
    with pytest.raises(StoreError, match="missing"):
        store.upsert_scores([{"transaction_id": "t1", "score": 0.1}])


def test_alerts_are_inserted_once(store: Store):
    assert store.insert_alerts([fs(1, 0.9, "decline"), fs(2, 0.8, "decline")]) == 2
    store.insert_alerts([fs(1, 0.99, "decline")] + [fs(i, 0.9, "decline") for i in range(3, 700)])
    assert store.count("alerts") == 699
    assert scalar(store, "SELECT score FROM alerts WHERE transaction_id = 't1'") == 0.9  # the first alert stands


def test_summaries_keyed_on_report_and_model_version(store: Store):
    store.upsert_summaries([summary("r1", "v1"), summary("r1", "v2"), summary("r2", "v1")])
    store.upsert_summaries([summary("r1", "v1", "Revenue rose 6%.")])
    assert store.count("report_summaries") == 3
    assert store.summaries_done(["r1", "r2", "r3"], "v1") == {"r1": None, "r2": None}  # id -> content hash
    assert store.summaries_done(["r1", "r2", "r3"], "v2") == {"r1": None}
    got = store.get_result("r1", model_version="v1")
    assert isinstance(got, ReportSummary) and got.summary == "Revenue rose 6%."
    assert got.key_facts[0].spans[0] == Span(start=13, end=15) and got.faithfulness == {"figures_supported": 1.0}
    assert store.get_result("nope") is None


def test_dead_letters_keep_reason_and_are_not_duplicated_on_replay(store: Store):
    store.max_payload_bytes = 64
    letters = [DeadLetter(source="argus.transactions", partition=0, offset=5, payload=b'{"amount": -1}',
                          reason="amount: Input should be greater than or equal to 0", stage="decode"),
               DeadLetter(source="argus.transactions", partition=1, offset=5, payload=b"x" * 100,
                          reason="malformed json", stage="decode"),
               DeadLetter(source="reports.jsonl", payload="not json", reason="malformed json", stage="decode")]
    assert store.add_dead_letters(letters) == 3
    store.add_dead_letters(letters)  # replay: positioned ones are already there, the loose one is new
    assert store.count("dead_letters") == 4
    rows = {(r["partition"], r["offset"]): r for r in store.dead_letter_rows(source="argus.transactions")}
    assert rows[(0, 5)]["reason"].startswith("amount:") and rows[(0, 5)]["stage"] == "decode"
    assert bytes(rows[(0, 5)]["payload"]) == b'{"amount": -1}' and not rows[(0, 5)]["payload_truncated"]
    big = rows[(1, 5)]
    assert big["payload_truncated"] and len(bytes(big["payload"])) == 64 and big["payload_size"] == 100
    assert "truncated to 64 of 100 bytes" in big["reason"]


def test_write_batch_is_atomic(store: Store):
    good = DeadLetter(source="t", partition=0, offset=1, payload=b"x", reason="r", stage="decode")
    counts = store.write_batch(scores=[fs(i) for i in range(10)], alerts=[fs(1, 0.9, "decline")], dead_letters=[good])
    assert (counts.scores, counts.alerts, counts.dead_letters) == (10, 1, 1)
    broken = DeadLetter(source="t", partition=0, offset=2, payload=b"x", reason="r", stage=None)  # NOT NULL
    with pytest.raises(StoreError, match="store write failed"):
        store.write_batch(scores=[fs(i, 0.01, "approve") for i in range(10, 800)] + [fs(0, 0.01, "approve")],
                          alerts=[fs(2, 0.9, "decline")], dead_letters=[broken])
    assert store.stats()["fraud_scores"] == 10 and store.count("alerts") == 1 and store.count("dead_letters") == 1
    assert store.get_result("t0").score == 0.7  # the update inside the failed batch was rolled back


def test_runs(store: Store):
    run_id = store.start_run("fraud-stream")
    assert store.get_run(run_id)["status"] == "running"
    store.finish_run(run_id, counts={"scored": 12}, status="ok")
    run = store.get_run(run_id)
    assert run["status"] == "ok" and run["counts"] == {"scored": 12} and run["finished_at"] is not None
    with pytest.raises(StoreError, match="unknown run"):
        store.finish_run("nope")


def test_count_unknown_table(store: Store):
    with pytest.raises(StoreError, match="unknown table"):
        store.count("users")


def test_connect_error_is_one_line_with_password_masked():
    with pytest.raises(StoreError) as info:
        Store.from_url("postgresql+psycopg://argus:hunter2secret@127.0.0.1:1/argus")
    msg = str(info.value)
    assert "hunter2secret" not in msg and "***" in msg and "\n" not in msg and "cannot connect" in msg
    with pytest.raises(StoreError, match="unsupported store URL"):
        Store.from_url("mysql://u:p@h/db")


# --- two processes writing at once ----------------------------------------------------------------

def _writer(url: str, start: int, stop: int, go, errors) -> None:
    try:
        store = Store.from_url(url)
        go.wait(30)
        ids = list(range(start, stop))
        for lo in range(0, len(ids), 600):  # >= copy threshold: PostgreSQL takes the COPY path
            batch = ids[lo:lo + 600]
            store.write_batch(scores=[fs(i) for i in batch], alerts=[fs(i, 0.9, "decline") for i in batch if i % 10 == 0],
                              dead_letters=[DeadLetter(source="tx", partition=i % 4, offset=i, payload=b"{}",
                                                       reason="r", stage="decode") for i in batch if i % 7 == 0])
            store.upsert_scores([fs(i, 0.5) for i in batch[:50]])  # a small (executemany) upsert too
        store.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_write_overlapping_ids(store: Store, store_url: str):
    ctx = mp.get_context("fork")
    go, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(store_url, 0, 4000, go, errors)),
             ctx.Process(target=_writer, args=(store_url, 2000, 6000, go, errors))]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert errors.empty(), errors.get()
    assert store.count("fraud_scores") == 6000
    assert store.count("alerts") == 600
    assert store.count("dead_letters") == len([i for i in range(6000) if i % 7 == 0])
    assert scalar(store, "SELECT count(DISTINCT transaction_id) FROM fraud_scores") == 6000
    assert scalar(store, "SELECT min(score) FROM fraud_scores") >= 0.5
    ts = datetime.now(timezone.utc)
    assert store.get_result("t5999").scored_at <= ts


def test_cli_store_init_and_stats(sqlite_url: str):
    import subprocess
    import sys

    def argus(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from services.cli import main; main()", *args],
                              capture_output=True, text=True, timeout=120)

    first, again = argus("store", "init", "--url", sqlite_url), argus("store", "init", "--url", sqlite_url)
    assert first.returncode == 0 and "(created)" in first.stdout
    assert again.returncode == 0 and "already current" in again.stdout
    Store.from_url(sqlite_url).upsert_scores([fs(1), fs(2)])
    stats = argus("store", "stats", "--url", sqlite_url)
    assert stats.returncode == 0 and re.search(r"fraud_scores\s*│\s*2\s*│", stats.stdout), stats.stdout
    down = argus("store", "stats", "--url", "postgresql+psycopg://argus:pw123@127.0.0.1:1/x")
    assert down.returncode == 3 and "cannot connect" in down.stderr and "pw123" not in down.stderr


def test_from_settings_uses_store_url(sqlite_url: str, monkeypatch):
    from pipelines.settings import Settings

    monkeypatch.setenv("ARGUS_STORE__URL", sqlite_url)
    with Store.from_settings(Settings()) as store:
        assert store.create_schema() == SCHEMA_VERSION and store.url == sqlite_url


def test_write_batch_with_summaries_and_score_provenance(store: Store):
    counts = store.write_batch(summaries=[summary("r1", "v1"), summary("r1", "v1")],
                               scores=[{**score_row(fs(1)), "payload_hash": "ab" * 32, "source_position": "tx:0:5"}])
    assert (counts.summaries, counts.scores) == (1, 1)
    assert store.score_provenance(["t1", "t2"]) == {"t1": ("ab" * 32, "tx:0:5")}
    with pytest.raises(StoreError):
        store.write_batch(summaries=[summary("r2", "v1")],
                          dead_letters=[DeadLetter(source="r", partition=0, offset=1, reason="x", stage=None)])
    assert set(store.summaries_done(["r1", "r2"], "v1")) == {"r1"}
