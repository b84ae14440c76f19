"""great-expectations suites: every failing record names its failed expectation; good rows proceed."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contracts import FraudScore, Report, ReportSummary, Transaction
from pipelines.validation import (
    expected_decision,
    validate_reports,
    validate_scores,
    validate_summaries,
    validate_transactions,
)


def tx(i: int, **kw):
    base = dict(transaction_id=f"t{i}", timestamp="2018-04-01T00:00:31Z", customer_id="c1", terminal_id="k1",
                amount=12.5)
    return {**base, **kw}


def reasons_by_id(result, key="transaction_id"):
    return {row[key] if isinstance(row, dict) else getattr(row, key): why for row, why in result.failures}


@pytest.mark.parametrize(
    "bad, expectation, detail",
    [
        (dict(amount=math.nan), "expect_column_values_to_not_be_null(amount)", "not a number"),
        (dict(amount=None), "expect_column_values_to_not_be_null(amount)", "missing"),
        (dict(amount="twelve"), "expect_column_values_to_not_be_null(amount)", "'twelve'"),
        (dict(amount=math.inf), "expect_column_values_to_be_between(amount)", "inf is not finite"),
        (dict(amount=-math.inf), "expect_column_values_to_be_between(amount)", "-inf"),
        (dict(amount=-0.01), "expect_column_values_to_be_between(amount)", "-0.01"),
        (dict(amount=5e9), "expect_column_values_to_be_between(amount)", "5000000000.0"),
        (dict(timestamp="2999-01-01T00:00:00Z"), "expect_column_values_to_be_between(timestamp)", "in the future"),
        (dict(timestamp="yesterday-ish"), "expect_column_values_to_not_be_null(timestamp)", "not parseable"),
        (dict(customer_id=""), "expect_column_values_to_match_regex(customer_id)", "customer_id is empty"),
        (dict(terminal_id="   "), "expect_column_values_to_match_regex(terminal_id)", "terminal_id is empty"),
        (dict(customer_id=None), "expect_column_values_to_match_regex(customer_id)", "None"),
    ],
)
def test_transaction_expectation_names_itself(bad, expectation, detail):
    rows = [tx(0), tx(1, **bad), tx(2)]
    result = validate_transactions(rows, max_amount=1_000_000)
    assert [r["transaction_id"] for r in result.good_rows] == ["t0", "t2"]
    assert len(result.failures) == 1
    row, why = result.failures[0]
    assert row is rows[1]
    assert why.startswith(f"{expectation}: ") and detail in why


def test_empty_transaction_id_and_several_failures_in_one_row():
    result = validate_transactions([tx(0, transaction_id="", amount=-5, timestamp="nope")])
    (_, why), = result.failures
    assert "expect_column_values_to_match_regex(transaction_id)" in why
    assert "expect_column_values_to_be_between(amount)" in why
    assert "expect_column_values_to_not_be_null(timestamp)" in why
    assert why.count("; ") == 2


def test_future_tolerance_and_configured_max():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [tx(0, timestamp=now + timedelta(seconds=60)), tx(1, timestamp=now + timedelta(seconds=600)),
            tx(2, amount=150.0)]
    result = validate_transactions(rows, now=now, future_tolerance_s=300, max_amount=100.0)
    assert [r["transaction_id"] for r in result.good_rows] == ["t0"]
    why = reasons_by_id(result)
    assert "in the future" in why["t1"] and "within [0, 100.0]" in why["t2"]


def test_good_rows_keep_their_objects_and_order():
    models = [Transaction(**tx(i)) for i in range(50)]
    result = validate_transactions(models)
    assert result.ok and all(a is b for a, b in zip(result.good_rows, models))


def test_polars_frame_in():
    frame = pl.DataFrame([tx(0), tx(1, amount=-3.0), tx(2)])
    result = validate_transactions(frame)
    assert [r["transaction_id"] for r in result.good_rows] == ["t0", "t2"]
    assert reasons_by_id(result)["t1"].startswith("expect_column_values_to_be_between(amount)")


@pytest.mark.parametrize("score, expected", [(0.0, "approve"), (0.2, "review"), (0.49, "review"), (0.5, "decline"),
                                             (1.0, "decline")])
def test_expected_decision(score, expected):
    assert expected_decision(score, alert_threshold=0.5, review_threshold=0.2) == expected


def test_scores():
    rows = [
        dict(transaction_id="ok1", score=0.1, decision="approve", model_version="m"),
        FraudScore(transaction_id="ok2", score=0.7, decision="decline", model_version="m"),
        dict(transaction_id="hi", score=1.2, decision="decline", model_version="m"),
        dict(transaction_id="lo", score=-0.1, decision="approve", model_version="m"),
        dict(transaction_id="nan", score=math.nan, decision="approve", model_version="m"),
        dict(transaction_id="incons", score=0.9, decision="approve", model_version="m"),
        dict(transaction_id="review", score=0.1, decision="review", model_version="m"),
        dict(transaction_id="unknown", score=0.1, decision="maybe", model_version="m"),
        dict(transaction_id="nover", score=0.1, decision="approve", model_version=""),
    ]
    result = validate_scores(rows, alert_threshold=0.5, review_threshold=0.2)
    assert [getattr(r, "transaction_id", None) or r["transaction_id"] for r in result.good_rows] == ["ok1", "ok2"]
    why = reasons_by_id(result)
    assert why["hi"].startswith("expect_column_values_to_be_between(score): 1.2 is not within [0, 1]")
    assert why["lo"].startswith("expect_column_values_to_be_between(score)")
    assert why["nan"].startswith("expect_column_values_to_not_be_null(score)")
    assert why["incons"].startswith("expect_column_pair_values_to_be_equal(decision): decision 'approve' but score 0.9 "
                                    "gives 'decline'")
    assert "gives 'approve'" in why["review"]
    assert "expect_column_values_to_be_in_set(decision)" in why["unknown"]
    assert why["nover"].startswith("expect_column_values_to_match_regex(model_version)")


def test_summaries():
    source = "Revenue rose 5% to $10m. Margins fell. Guidance was raised for the full year."
    good = ReportSummary(report_id="r1", domain="finance", summary="Revenue rose 5% to $10m.", model_version="v1")
    rows = [good,
            dict(report_id="r2", domain="finance", summary="", model_version="v1"),
            dict(report_id="r3", domain="finance", summary=source + " And more.", model_version="v1"),
            dict(report_id="r4", domain="finance", summary="Margins fell.", model_version=""),
            dict(report_id="r5", domain="legal", summary="Margins fell.", model_version="v1")]
    result = validate_summaries(rows, sources={f"r{i}": source for i in range(1, 6)})
    assert result.good_rows == [good]
    why = reasons_by_id(result, "report_id")
    assert why["r2"].startswith("expect_column_values_to_match_regex(summary): summary is empty")
    assert why["r3"].startswith("expect_column_pair_values_a_to_be_greater_than_b(source, summary): summary has")
    assert why["r4"].startswith("expect_column_values_to_match_regex(model_version)")
    assert why["r5"].startswith("expect_column_values_to_be_in_set(domain)")
    with pytest.raises(ValueError, match="no source text"):
        validate_summaries([dict(report_id="zz", domain="finance", summary="x", model_version="v1")])


def test_reports():
    good = Report(report_id="a", domain="medical", text="No acute findings.")
    rows = [good, dict(report_id="b", domain="medical", text=" \n "), dict(report_id="c", domain="legal", text="x"),
            dict(report_id="", domain="finance", text="x")]
    result = validate_reports(rows)
    assert result.good_rows == [good]
    why = [w for _, w in result.failures]
    assert why[0].startswith("expect_column_values_to_match_regex(text)")
    assert why[1].startswith("expect_column_values_to_be_in_set(domain)")
    assert why[2].startswith("expect_column_values_to_match_regex(report_id)")


def test_empty_input():
    assert validate_transactions([]).good_rows == [] and validate_transactions([]).ok


def _mixed_rows(seed: int):
    import random

    rnd = random.Random(seed)
    amounts = [12.5, 0.0, -1.0, math.nan, math.inf, -math.inf, None, "x", 2e6, 999_999.0]
    stamps = ["2018-04-01T00:00:31Z", "2999-01-01T00:00:00Z", "junk", None, datetime(2020, 1, 1)]
    ids = ["a", "", "  ", None]
    txs = [tx(i, amount=rnd.choice(amounts), timestamp=rnd.choice(stamps), customer_id=rnd.choice(ids))
           for i in range(300)]
    scores = [dict(transaction_id=rnd.choice(ids + ["t"]), model_version=rnd.choice(["m", ""]),
                   score=rnd.choice([0.0, 0.1, 0.2, 0.5, 0.99, 1.0, 1.5, -0.2, math.nan, None]),
                   decision=rnd.choice(["approve", "review", "decline", "nope", None])) for _ in range(300)]
    sums = [dict(report_id=f"r{i}", domain=rnd.choice(["finance", "medical", "legal", None]),
                 summary=rnd.choice(["", "short", "x" * 50]), model_version=rnd.choice(["v", ""]),
                 source_chars=rnd.choice([0, 5, 10, 100])) for i in range(300)]
    reports = [dict(report_id=rnd.choice(ids), domain=rnd.choice(["finance", "medical", "x"]),
                    text=rnd.choice(["", " ", "text"])) for _ in range(300)]
    return txs, scores, sums, reports


def test_fast_engine_matches_gx():
    txs, scores, sums, reports = _mixed_rows(7)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    pairs = [
        lambda e: validate_transactions(txs, now=now, max_amount=1e6, engine=e),
        lambda e: validate_scores(scores, alert_threshold=0.5, review_threshold=0.2, engine=e),
        lambda e: validate_summaries(sums, engine=e),
        lambda e: validate_reports(reports, engine=e),
    ]
    for run in pairs:
        gx_result, fast_result = run("gx"), run("fast")
        assert fast_result.good_rows == gx_result.good_rows
        assert fast_result.failures == gx_result.failures
        assert 0 < len(gx_result.failures) < 300  # the data exercises both outcomes
    with pytest.raises(ValueError, match="unknown validation engine"):
        validate_reports(reports, engine="turbo")


_odd_text = st.one_of(st.none(), st.text(alphabet=st.sampled_from(["a", " ", "\t", "\x1c", "\u2028", "\xa0", "\u3000",
                                                                     "\x85", "é", "\x00"]), max_size=4),
                      st.integers(), st.floats(allow_nan=True, allow_infinity=True))
_odd_number = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
                        st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries({
    "transaction_id": _odd_text, "customer_id": _odd_text, "terminal_id": _odd_text, "amount": _odd_number,
    "timestamp": st.one_of(st.none(), st.sampled_from(["2018-04-01T00:00:31Z", "2999-01-01T00:00:00Z", "junk", ""]),
                           st.datetimes(), st.integers())}), min_size=1, max_size=12),
       scores=st.lists(st.fixed_dictionaries({
           "transaction_id": _odd_text, "model_version": _odd_text, "score": _odd_number,
           "decision": st.one_of(st.none(), st.sampled_from(["approve", "review", "decline", "x", ""]), st.integers())}),
           min_size=1, max_size=12))
def test_fast_engine_matches_gx_on_any_values(rows, scores):
    """The numpy engine the stream runs fails exactly the rows GX fails, with the same reasons."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for run in (lambda e: validate_transactions(rows, now=now, max_amount=1e6, engine=e),
                lambda e: validate_scores(scores, alert_threshold=0.5, review_threshold=0.2, engine=e)):
        gx_result, fast_result = run("gx"), run("fast")
        assert fast_result.good_rows == gx_result.good_rows
        assert fast_result.failures == gx_result.failures
