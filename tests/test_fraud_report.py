"""`argus eval fraud` (pipelines/fraud_report.py) on synthetic scores: the metric functions (hypothesis:
bounds, perfect and reversed scores, agreement with models/train_fraud.py's Card Precision@k), the
report end to end through the CLI (labels from the scores file, a handbook CSV or a labels Parquet,
a baseline beside), and hostile or malformed files (one clear line, exit code 6, nothing written)."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from models.train_fraud import card_precision_at_k
from pipelines.fraud_report import (
    FraudReportError,
    average_precision,
    build_report,
    card_precision_per_day,
    flagged_top,
    precision_recall_at,
    recall_per_kind,
    reliability,
)
from services.cli import app

KINDS = ["amount_threshold", "compromised_terminal", "account_takeover"]


def synthetic(n: int = 6000, days: int = 8, seed: int = 0, skill: float = 2.5, model: str = "fraud-test") -> pl.DataFrame:
    """A replay-shaped scores frame: frauds score higher by `skill` logits, three fraud kinds."""
    rng = np.random.default_rng(seed)
    label = rng.uniform(size=n) < 0.03
    kind = np.where(label, rng.choice(KINDS, size=n), "genuine")
    logit = rng.normal(-3, 1, n) + skill * label
    t0 = datetime(2018, 7, 4, tzinfo=timezone.utc)
    ts = sorted(t0 + timedelta(seconds=float(s)) for s in rng.uniform(0, days * 86400, n))
    return pl.DataFrame({"transaction_id": [f"hb-{i}" for i in range(n)], "timestamp": ts,
                         "customer_id": [f"C{c:06d}" for c in rng.integers(0, 400, n)],
                         "terminal_id": [f"T{c:06d}" for c in rng.integers(0, 900, n)],
                         "score": (1 / (1 + np.exp(-logit))).astype(np.float32), "decision": "approve",
                         "model_version": model, "label": label, "fraud_scenario": kind})


# --- metric functions ----------------------------------------------------------------------------

labels_and_scores = st.integers(1, 300).flatmap(lambda n: st.tuples(
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n)))


@settings(max_examples=200, deadline=None)
@given(ys=labels_and_scores)
def test_perfect_scores_give_ap_1_and_bounds_hold(ys):
    y, p = np.array(ys[0]), np.array(ys[1])
    ap = average_precision(y, p)
    if not y.any():
        assert ap is None
        return
    assert 0 < ap <= 1
    assert average_precision(y, y.astype(float)) == pytest.approx(1.0)
    for t in (0.0, 0.2, 0.5, 1.0):
        at = precision_recall_at(y, p, t)
        assert at["recall"] is None or 0 <= at["recall"] <= 1
        assert at["precision"] is None or 0 <= at["precision"] <= 1
    recalls = [precision_recall_at(y, p, t)["recall"] for t in np.linspace(0, 1, 11)]
    assert all(a >= b for a, b in zip(recalls, recalls[1:]))  # a higher threshold never catches more
    assert precision_recall_at(y, p, 0.0)["recall"] == 1.0


@settings(max_examples=150, deadline=None)
@given(ys=labels_and_scores)
def test_reliability_bins_partition_the_scores(ys):
    y, p = np.array(ys[0]), np.array(ys[1])
    c = reliability(y, p)
    assert sum(c["counts"]) == len(y)
    assert all(r is None or 0 <= r <= 1 for r in c["fraud_rate"])
    for lo, hi, m in zip(c["edges"], c["edges"][1:], c["mean_score"]):
        assert m is None or lo - 1e-12 <= m <= hi + 1e-12
    assert 0 <= c["ece"] <= 1 and 0 <= c["brier"] <= 1


def test_a_calibrated_model_has_a_small_ece():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=200_000)
    assert reliability(rng.uniform(size=p.size) < p, p)["ece"] < 0.01
    assert reliability(rng.uniform(size=p.size) < p, p ** 4)["ece"] > 0.1  # over-confident the other way


cards = st.integers(1, 250).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 3), min_size=n, max_size=n), st.lists(st.integers(0, 150), min_size=n, max_size=n),
    # distinct scores: the two implementations break ties between customers differently
    st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n, unique=True), st.lists(st.booleans(), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=cards, k=st.integers(1, 120))
def test_card_precision_is_bounded_and_matches_the_training_code(data, k):
    day, customer, p, y = (np.array(v) for v in data)
    per_day = card_precision_per_day(day, customer, p, y, k=k)
    assert per_day["day"].to_list() == sorted(set(day.tolist()))
    assert ((per_day["cp"] >= 0) & (per_day["cp"] <= 1)).all()
    assert (per_day["cards"] <= k).all() and (per_day["frauds_in_top"] <= per_day["cards"]).all()
    reference = card_precision_at_k(pd.DataFrame({"DAY": day, "CUSTOMER_ID": customer, "TX_FRAUD": y.astype(int)}), p, k=k)
    assert float(per_day["cp"].mean()) == pytest.approx(reference)
    # a perfect ranking finds every defrauded card up to the budget
    perfect = card_precision_per_day(day, customer, y.astype(float), y, k=k)
    frauds = pl.DataFrame({"day": day, "c": customer, "y": y}).filter(pl.col("y")).group_by("day").agg(pl.col("c").n_unique())
    expected = {d: min(n, k) / k for d, n in frauds.iter_rows()}
    assert {d: cp for d, cp in perfect.select("day", "cp").iter_rows() if cp} == pytest.approx(expected)


@settings(max_examples=100, deadline=None)
@given(ys=labels_and_scores, share=st.floats(0.001, 1))
def test_recall_per_kind_at_a_share(ys, share):
    y, p = np.array(ys[0]), np.array(ys[1])
    kind = np.where(y, np.where(np.arange(len(y)) % 2, "a", "b"), "genuine")
    assert flagged_top(p, share).sum() == min(len(p), int(np.ceil(share * len(p))))
    per = recall_per_kind(y, p, kind, share)
    assert set(per) == set(kind[y].tolist())
    assert all(0 <= v["recall"] <= 1 and v["caught"] <= v["frauds"] for v in per.values())
    if y.sum() <= share * len(y):  # room for every fraud: a perfect ranking catches all of them
        assert all(v["recall"] == 1 for v in recall_per_kind(y, y.astype(float), kind, share).values())


# --- the report end to end ------------------------------------------------------------------------

def images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_beside_a_baseline_through_the_cli(tmp_path):
    scores, baseline = tmp_path / "scored.parquet", tmp_path / "lgbm.parquet"
    synthetic(skill=3.0).write_parquet(scores)
    synthetic(skill=1.0, model="lightgbm").write_parquet(baseline)
    out = tmp_path / "report" / "fraud.html"
    res = CliRunner().invoke(app, ["eval", "fraud", "--scores", str(scores), "--baseline", str(baseline), "--out", str(out)],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "fraud-test" in res.output and "lightgbm" in res.output and "CP@100" in res.output and "precision@0.2" in res.output
    page = out.read_text()
    pngs = images(page)
    assert len(pngs) == 4 and all(p.startswith(b"\x89PNG") for p in pngs)  # PR, calibration, kinds, CP per day
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    for section in ("Precision-recall", "At the review and alert thresholds", "Calibration",
                    "Recall per fraud kind at 1% flagged", "Card Precision@100 per day"):
        assert section in page
    report = build_report(scores, baseline=baseline)
    m, b = report.model, report.baseline
    assert m.ap > b.ap and m.cp_mean > b.cp_mean  # the stronger synthetic model is ahead, as built
    assert set(m.per_kind) == set(KINDS) and m.cp_per_day.height == 8
    assert m.at_review["threshold"] == 0.2 and m.at_alert["threshold"] == 0.5
    assert m.at_review["recall"] >= m.at_alert["recall"]
    for day in m.cp_per_day["day"].to_list():
        assert str(day) in page
    assert "0.9-1.0" in page and "fraud rate (lightgbm)" in page  # the reliability table, bin by bin, both models


def test_labels_from_a_handbook_csv_or_parquet_and_a_window(tmp_path):
    frame = synthetic(n=3000, days=4)
    scores = tmp_path / "s.parquet"
    frame.drop("label", "fraud_scenario").write_parquet(scores)
    codes = {"genuine": 0, "amount_threshold": 1, "compromised_terminal": 2, "account_takeover": 3}
    handbook = frame.select(pl.col("transaction_id").str.strip_prefix("hb-").cast(pl.Int64).alias("TRANSACTION_ID"),
                            pl.col("label").cast(pl.Int8).alias("TX_FRAUD"),
                            pl.col("fraud_scenario").replace_strict(codes, return_dtype=pl.Int8).alias("TX_FRAUD_SCENARIO"))
    handbook.write_csv(tmp_path / "hb.csv")
    handbook.drop("TX_FRAUD_SCENARIO").write_parquet(tmp_path / "hb.parquet")
    from_csv = build_report(scores, tmp_path / "hb.csv")
    frame.write_parquet(tmp_path / "truth.parquet")  # the labels in the scores file itself
    truth = build_report(tmp_path / "truth.parquet")
    assert from_csv.model.ap == pytest.approx(truth.model.ap) and from_csv.model.frauds == int(frame["label"].sum())
    assert set(from_csv.model.per_kind) == set(KINDS)
    no_kinds = build_report(scores, tmp_path / "hb.parquet", start="2018-07-05", end="2018-07-07")
    assert no_kinds.model.per_kind is None and no_kinds.window == ("2018-07-05", "2018-07-06")
    assert no_kinds.model.cp_per_day.height == 2


def test_a_baseline_is_compared_on_the_shared_transactions(tmp_path):
    frame = synthetic(n=2000, days=3)
    frame.write_parquet(tmp_path / "s.parquet")
    frame.head(1500).with_columns(pl.lit("other").alias("model_version")).write_parquet(tmp_path / "b.parquet")
    report = build_report(tmp_path / "s.parquet", baseline=tmp_path / "b.parquet")
    assert report.dropped == 500 and report.model.rows == report.baseline.rows == 1500
    assert report.baseline.name == "other"


# --- hostile and malformed input ------------------------------------------------------------------

def run(args) -> tuple[int, str]:
    """`argus eval fraud ARGS` in-process through the console entry point (services.cli.main, which
    turns an ArgusError into one red line and its exit code): (exit code, stdout + stderr)."""
    import contextlib
    import io
    import sys

    from services.cli import main

    out = io.StringIO()
    argv, sys.argv = sys.argv, ["argus", "eval", "fraud", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue()


def one_line_error(result, tmp_path, *needles):
    code, output = result
    assert code == 6, output
    text = " ".join(output.split())  # rich wraps a long line at the console width
    assert text.startswith("error: ") and text.count("error: ") == 1 and "Traceback" not in text, output
    for n in needles:
        assert n in text, output
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("case, needle", [
    ("missing", "not found"), ("garbage", "cannot read"), ("csv", "unsupported"), ("no_score", "lacks column(s) score"),
    ("text_score", "wrong type"), ("nan", "not a number in [0, 1]"), ("above_one", "not a number in [0, 1]"),
    ("dupes", "duplicated"), ("no_label", "no label column"), ("empty", "no rows"), ("bad_time", "not a date-time"),
    ("window", "no transaction in the evaluation window"), ("bad_date", "not a date"),
    ("labels_missing", "have no label"), ("labels_bad", "TX_FRAUD must be 0 or 1"), ("labels_garbage", "has neither the handbook's TRANSACTION_ID and TX_FRAUD"),
    ("baseline_disjoint", "scores none of the transactions"),
])
def test_bad_files_get_one_clear_line(tmp_path, case, needle):
    good = synthetic(n=500, days=2)
    s = tmp_path / "s.parquet"
    args = ["--scores", str(s), "--out", str(tmp_path / "r.html")]
    frame = good
    if case == "missing":
        s = tmp_path / "nope.parquet"
        args[1] = str(s)
    elif case == "garbage":
        s.write_bytes(b"PAR1" + bytes(range(256)) * 10)
    elif case == "csv":
        args[1] = str(tmp_path / "s.csv")
        good.drop("timestamp").write_csv(args[1])
    else:
        frame = {"no_score": lambda f: f.drop("score"), "text_score": lambda f: f.with_columns(pl.lit("high").alias("score")),
                 "nan": lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(float("nan")).otherwise(pl.col("score")).alias("score")),
                 "above_one": lambda f: f.with_columns(pl.col("score") + 1),
                 "dupes": lambda f: pl.concat([f, f.head(2)]), "no_label": lambda f: f.drop("label"),
                 "empty": lambda f: f.head(0), "bad_time": lambda f: f.with_columns(pl.lit("yesterday").alias("timestamp")),
                 }.get(case, lambda f: f)(good)
        frame.write_parquet(s)
    if case == "window":
        args += ["--start", "2030-01-01"]
    if case == "bad_date":
        args += ["--start", "July"]
    if case.startswith("labels"):
        labels = tmp_path / "l.csv"
        ids = good["transaction_id"].str.strip_prefix("hb-").cast(pl.Int64)
        if case == "labels_missing":
            pl.DataFrame({"TRANSACTION_ID": ids.head(100), "TX_FRAUD": [0] * 100}).write_csv(labels)
        elif case == "labels_bad":
            pl.DataFrame({"TRANSACTION_ID": ids, "TX_FRAUD": [7] * len(ids)}).write_csv(labels)
        else:
            labels.write_bytes(b"\x00\xff" * 500)
        args += ["--labels", str(labels)]
    if case == "baseline_disjoint":
        b = tmp_path / "b.parquet"
        good.with_columns(("x" + pl.col("transaction_id")).alias("transaction_id")).write_parquet(b)
        args += ["--baseline", str(b)]
    one_line_error(run(args), tmp_path, needle)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=3000))
def test_random_bytes_are_never_a_traceback(tmp_path, blob):
    for name in ("s.parquet", "s.csv"):
        (tmp_path / name).write_bytes(blob)
        res = run(["--scores", str(tmp_path / "s.parquet"), "--labels", str(tmp_path / "s.csv"), "--out", str(tmp_path / "r.html")])
        one_line_error(res, tmp_path)


def test_hostile_names_are_escaped_in_the_report(tmp_path):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>[/][bold]"  # HTML and rich markup
    synthetic(n=800, days=2, model=evil).write_parquet(tmp_path / "s.parquet")
    code, output = run(["--scores", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "r.html")])
    assert code == 0, output
    assert "[/][bold]" in output  # the terminal table shows the name as it is
    page = (tmp_path / "r.html").read_text()
    assert evil not in page and "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_without_the_eval_extra_it_says_which_to_install(tmp_path, monkeypatch):
    import sys

    synthetic(n=300, days=1).write_parquet(tmp_path / "s.parquet")
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed
    code, output = run(["--scores", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "r.html")])
    assert code != 0 and "pip install 'argus[eval]'" in " ".join(output.split()) and "Traceback" not in output
    assert not (tmp_path / "r.html").exists()
