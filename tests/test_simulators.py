"""Transaction and report simulators, and the handbook adapter (no broker, small data)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.contracts import Domain, Label, Report, Transaction, decode
from pipelines.handbook import HandbookError, load_frame, load_labels, read_handbook, scan_handbook
from pipelines.simulate_reports import finance_report, generate_reports, medical_report, write_reports
from pipelines.simulate_transactions import (GRID_COUNTRIES, HIGH_RISK_CATEGORIES, TYPOLOGIES, SimulatorConfig,
                                             TransactionSimulator, labels_frame, labels_ndjson, run_to_file,
                                             transactions_ndjson, write_handbook_csv)

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(n_customers=400, n_terminals=800)
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def block() -> pl.DataFrame:
    sim = TransactionSimulator(SimulatorConfig(seed=7, fraud_rate=0.05, **SMALL))
    return sim.stream_block(20_000, T0, T0 + 600)


def test_block_has_exact_size_sorted_and_valid_contracts(block):
    assert block.height == 20_000
    assert block["timestamp"].is_sorted()
    assert block["transaction_id"].n_unique() == 20_000
    for raw in transactions_ndjson(block):
        tx = decode(Transaction, raw)
        assert tx.amount >= 0 and tx.channel is not None and tx.country and tx.currency


def test_every_typology_present_and_labelled(block):
    counts = dict(block.group_by("fraud_scenario").len().iter_rows())
    assert set(TYPOLOGIES) <= set(counts), counts
    assert (block["is_fraud"] == (block["fraud_scenario"] != "genuine")).all()
    assert 0.03 < block["is_fraud"].mean() < 0.08
    labels = labels_frame(block, timedelta(days=7))
    assert labels.height == block["is_fraud"].sum() and labels["is_fraud"].all()
    joined = labels.join(block.select("transaction_id", "timestamp"), on="transaction_id")
    assert ((joined["reported_at"] - joined["timestamp"]) == timedelta(days=7)).all()
    for raw in labels_ndjson(labels):
        assert decode(Label, raw).is_fraud
    assert labels_frame(block, timedelta(0), negatives=True).height == block.height


def test_typologies_look_like_their_names(block):
    def rows(name):
        return block.filter(pl.col("fraud_scenario") == name)

    card = rows("card_testing")
    assert (card["amount"] < 3).all() and (card["channel"] == "online").all()
    assert (rows("account_takeover")["amount"] >= 300).all()
    assert rows("merchant_category_shift")["merchant_category"].is_in(HIGH_RISK_CATEGORIES).all()
    home = set(GRID_COUNTRIES.ravel())
    assert not rows("geo_impossible")["country"].is_in(list(home)).any()
    # geo-impossible: the same customer was at home moments before
    for cust, ts in rows("geo_impossible").select("customer_id", "timestamp").iter_rows():
        before = block.filter((pl.col("customer_id") == cust) & (pl.col("timestamp") <= ts) & pl.col("country").is_in(list(home)))
        assert before.height and (ts - before["timestamp"].max()) < timedelta(minutes=5)
    # velocity bursts: many transactions by one customer within a minute
    burst = rows("velocity_burst").group_by("customer_id").agg(pl.len(), (pl.col("timestamp").max() - pl.col("timestamp").min()).alias("span"))
    assert (burst["len"] >= 8).all() and (burst["span"] <= timedelta(minutes=1)).all()


def test_compromised_terminal_stays_compromised():
    sim = TransactionSimulator(SimulatorConfig(seed=3, fraud_rate=0.03, compromise_days=14, **SMALL))
    days = sim.simulate_days(10)
    bad = days.filter(pl.col("fraud_scenario") == "compromised_terminal")
    assert bad.height > 0
    first = bad.group_by("terminal_id").agg(pl.col("timestamp").min().alias("since"))
    after = days.join(first, on="terminal_id").filter(pl.col("timestamp") >= pl.col("since"))
    # every transaction at a compromised terminal after the compromise is fraud (some by another typology)
    assert after["is_fraud"].all()


def test_seed_determinism():
    a = TransactionSimulator(SimulatorConfig(seed=11, **SMALL)).stream_block(3000, T0, T0 + 60)
    b = TransactionSimulator(SimulatorConfig(seed=11, **SMALL)).stream_block(3000, T0, T0 + 60)
    c = TransactionSimulator(SimulatorConfig(seed=12, **SMALL)).stream_block(3000, T0, T0 + 60)
    assert a.equals(b)
    assert not a.select("customer_id", "amount").equals(c.select("customer_id", "amount"))


def test_days_mode_is_poisson_like():
    sim = TransactionSimulator(SimulatorConfig(seed=5, fraud_rate=0.0, **SMALL))
    days = sim.simulate_days(5)
    expected = sim.pop.cust_rate.sum() * 5
    assert abs(days.height - expected) < 5 * np.sqrt(expected)
    hours = days["timestamp"].dt.hour()
    assert hours.is_between(9, 15).mean() > 0.4  # transactions centre on noon, as in the handbook


def test_handbook_csv_round_trip(tmp_path):
    cfg = SimulatorConfig(seed=2, fraud_rate=0.04, **SMALL)
    written = write_handbook_csv(tmp_path / "hb.csv.gz", n_days=4, config=cfg)
    assert written.columns == ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_SECONDS",
                               "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO"]
    assert written["TX_TIME_DAYS"].max() == 3
    frame = load_frame(tmp_path / "hb.csv.gz")
    assert frame.height == written.height and frame["timestamp"].is_sorted()
    assert frame["is_fraud"].sum() == written["TX_FRAUD"].sum() > 0
    assert np.allclose(np.sort(frame["amount"].to_numpy()), np.sort(written["TX_AMOUNT"].to_numpy()))
    assert set(frame["fraud_scenario"].unique()) - {"genuine"} <= set(TYPOLOGIES)
    # a time window selects by timestamp
    day1 = load_frame(tmp_path / "hb.csv.gz", start="2018-04-02", end="2018-04-03")
    assert day1.height == (written["TX_TIME_DAYS"] == 1).sum()
    txs, labels = read_handbook(tmp_path / "hb.csv.gz", delay_days=3)
    assert len(txs) == written.height and all(isinstance(t, Transaction) for t in txs[:5])
    assert len(labels) == written["TX_FRAUD"].sum() and all(lb.is_fraud for lb in labels)
    by_id = {t.transaction_id: t for t in txs}
    assert all(lb.reported_at - by_id[lb.transaction_id].timestamp == timedelta(days=3) for lb in labels)
    assert load_labels(frame, 1.0, negatives=True).height == frame.height


def test_handbook_rejects_wrong_files(tmp_path):
    with pytest.raises(HandbookError, match="not found"):
        scan_handbook(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("TRANSACTION_ID,TX_AMOUNT\n1,2.0\n")
    with pytest.raises(HandbookError, match="missing columns TX_DATETIME"):
        scan_handbook(bad)


def test_file_outputs(tmp_path):
    res = run_to_file(tmp_path / "tx.parquet", rate=50, seconds=20, config=SimulatorConfig(seed=1, fraud_rate=0.05, **SMALL))
    frame = pl.read_parquet(tmp_path / "tx.parquet")
    assert res.transactions == frame.height == 1000
    assert pl.read_parquet(tmp_path / "tx.labels.parquet").height == res.labels == res.frauds
    run_to_file(tmp_path / "tx.jsonl", rate=10, seconds=10, config=SimulatorConfig(seed=1, **SMALL))
    lines = (tmp_path / "tx.jsonl").read_bytes().splitlines()
    assert len(lines) == 100 and all(decode(Transaction, line) for line in lines)


def test_cli_simulate_to_file(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from services.cli import main; main()", "simulate", "transactions", "--rate", "20",
                          "--seconds", "5", "--customers", "100", "--terminals", "200", "--seed", "4", "--output", str(tmp_path / "t.csv")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert pl.read_csv(tmp_path / "t.csv").height == 100


# --- reports -----------------------------------------------------------------------------------------

FIGURE = re.compile(r"(rose|fell) \d+% to \$[\d.,]+( billion| million)? in (Q[1-4] \d{4}|fiscal \d{4})")


@pytest.mark.parametrize("kind,headings", [
    ("quarterly_results", ["Highlights", "Segment Results", "Outlook", "Risk Factors"]),
    ("annual_report_10k", ["Item 1. Business", "Item 1A. Risk Factors", "Item 7. Management's Discussion"]),
    ("earnings_call", ["Prepared Remarks", "Question-and-Answer"]),
])
def test_finance_reports_have_sections_and_figures(kind, headings):
    report = finance_report(3, kind)
    assert report.domain == Domain.finance
    titles = [s["title"] for s in report.metadata["sections"]]
    for heading in headings:
        assert any(t.startswith(heading) for t in titles), (heading, titles)
        assert heading in report.text
    for sec in report.metadata["sections"]:
        assert report.text[sec["start"]:sec["end"]].startswith(sec["title"])
    figures = report.metadata["figures"]
    assert figures and any(FIGURE.search(f["text"]) for f in figures)
    for fact in figures + report.metadata["guidance"] + report.metadata["risk_factors"]:
        assert report.text[fact["start"]:fact["end"]] == fact["text"]


def test_medical_reports():
    rad = medical_report(1, "radiology")
    assert "FINDINGS" in rad.text and "IMPRESSION" in rad.text
    assert rad.text.index("FINDINGS") < rad.text.index("IMPRESSION")
    imp = rad.metadata["facts"]["impression"][0]
    assert rad.text[imp["start"]:imp["end"]] == imp["text"]
    dis = medical_report(1, "discharge_summary")
    for heading in ["Admission Diagnosis", "Hospital Course", "Discharge Medications"]:
        assert heading in dis.text
    assert dis.metadata["diagnosis"] in dis.text.lower()


def test_report_size_knob_and_determinism(tmp_path):
    big = finance_report(9, "annual_report_10k", words=60_000)
    assert 60_000 <= big.metadata["words"] < 61_000 and len(big.text.split()) >= 60_000
    assert finance_report(9, "annual_report_10k", words=60_000).text == big.text
    assert finance_report(10, "annual_report_10k", words=2000).text != finance_report(9, "annual_report_10k", words=2000).text
    reports = list(generate_reports(6, seed=1))
    assert [r.domain for r in reports] == [Domain.finance, Domain.medical] * 3
    assert write_reports(iter(reports), tmp_path / "r.jsonl") == 6
    back = [decode(Report, line) for line in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert back == reports
    assert write_reports(iter(reports), tmp_path / "dir") == 6
    meta = json.loads((tmp_path / "dir" / f"{reports[0].report_id}.json").read_text())
    assert (tmp_path / "dir" / f"{reports[0].report_id}.txt").read_text() == reports[0].text and meta["metadata"]["sections"]
