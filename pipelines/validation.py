"""Row-level data validation with great-expectations 1.x suites, for the inputs and outputs of Argus.

great-expectations validates a whole batch; Argus needs to route each failing record out (to the
dead-letter table/topic) with the failed expectation named, and let the rest proceed. Each
`validate_<kind>(rows)` therefore:

1. turns the rows (pydantic contracts, dicts, or a polars/pandas frame) into one pandas frame,
   adding derived columns where an expectation needs them (epoch seconds of a parsed timestamp,
   the decision the thresholds imply, character lengths);
2. validates it against a suite built once per process (an ephemeral GX context, progress bars
   off) with ``result_format=COMPLETE``, which returns every failing row's index
   (``unexpected_index_list``);
3. returns ``ValidationResult(good_rows, failures)``: the rows that passed every expectation, in
   input order, and ``(row, "expect_...(column): detail; ...")`` for each row that did not.

Kinds and their checks:

* transactions: ids non-empty; amount present, finite, in [0, max_amount]; timestamp parseable
  and not later than now + tolerance.
* scores: ids and model_version non-empty; score in [0, 1]; decision one of approve/review/decline
  and equal to what the thresholds give (score >= alert -> decline, >= review -> review, else
  approve).
* summaries: report_id and model_version non-empty; summary non-empty and not longer than its source;
  domain known.
* reports: report_id and text non-empty; domain known.

Usage::

    from pipelines.validation import validate_transactions
    result = validate_transactions(txs)                 # list[Transaction] | list[dict] | DataFrame
    for row, reason in result.failures: dead_letter(row, reason, stage="validate_input")
    score(result.good_rows)

Every function takes ``engine="gx"`` (default: the great-expectations suite) or ``engine="fast"``:
the same checks evaluated directly with pandas/numpy, with the same names and messages, for
latency-critical micro-batches where GX's fixed per-batch cost (~0.1-0.2 s, measured by
``benchmarks/validation_cost.py``) matters. Tests hold the two engines to identical results.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Literal

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

DOMAINS = ("finance", "medical")
DECISIONS = ("approve", "review", "decline")
ROW = "_argus_row"  # the frame index: position of the row in the input
NON_BLANK = r"\S"  # at least one non-space character


@dataclass
class ValidationResult:
    """good_rows: the rows that passed, in input order (the objects given, or dicts for a frame).
    failures: (row, reason) per failing row; reason names each failed expectation, e.g.
    ``"expect_column_values_to_be_between(amount): -1.0 is not within [0.0, 1000000.0]"``."""

    good_rows: list[Any] = field(default_factory=list)
    failures: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Check:
    """One expectation of a suite and how to describe a failing value of it."""

    expectation: Any
    describe: Callable[[Mapping[str, Any]], str]

    @property
    def name(self) -> str:
        cfg = self.expectation.configuration
        cols = [cfg.kwargs[k] for k in ("column", "column_A", "column_B") if k in cfg.kwargs]
        return f"{cfg.type}({', '.join(dict.fromkeys(_public(c) for c in cols))})"


def _public(column: str) -> str:
    """Derived columns are named `_<source>_<what>`; report them under the field they come from."""
    return column.split("__")[0].lstrip("_") if column.startswith("_") else column


# --- suites ---------------------------------------------------------------------------------------

def _id_checks(gxe: Any, columns: Sequence[str]) -> list[Check]:
    return [Check(gxe.ExpectColumnValuesToMatchRegex(column=c, regex=NON_BLANK),
                  lambda row, c=c: f"{c} is empty or missing (got {row.get(c)!r})") for c in columns]


def _suite_checks(kind: str) -> list[Check]:
    import great_expectations.expectations as gxe

    if kind == "transactions":
        return [
            *_id_checks(gxe, ("transaction_id", "customer_id", "terminal_id")),
            Check(gxe.ExpectColumnValuesToNotBeNull(column="amount"),
                  lambda row: f"amount is missing or not a number (got {row.get('amount')!r})"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=0.0,
                                                    max_value={"$PARAMETER": "max_amount"}),
                  lambda row: f"{row.get('amount')!r} is not finite within [0, {row['__max_amount']}]"),
            Check(gxe.ExpectColumnValuesToNotBeNull(column="_timestamp__epoch"),
                  lambda row: f"timestamp {row.get('timestamp')!r} is missing or not parseable"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="_timestamp__epoch",
                                                    max_value={"$PARAMETER": "latest_epoch"}),
                  lambda row: f"timestamp {row.get('timestamp')!s} is in the future (beyond "
                              f"{row['__tolerance_s']:g} s tolerance)"),
        ]
    if kind == "scores":
        return [
            *_id_checks(gxe, ("transaction_id", "model_version")),
            Check(gxe.ExpectColumnValuesToNotBeNull(column="score"),
                  lambda row: f"score is missing or not a number (got {row.get('score')!r})"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0.0, max_value=1.0),
                  lambda row: f"{row.get('score')!r} is not within [0, 1]"),
            Check(gxe.ExpectColumnValuesToBeInSet(column="decision", value_set=list(DECISIONS)),
                  lambda row: f"{row.get('decision')!r} is not one of {', '.join(DECISIONS)}"),
            Check(gxe.ExpectColumnPairValuesToBeEqual(column_A="decision", column_B="_decision__expected",
                                                      ignore_row_if="either_value_is_missing"),
                  lambda row: f"decision {row.get('decision')!r} but score {row.get('score')!r} gives "
                              f"{row['_decision__expected']!r} (review >= {row['__review']}, "
                              f"decline >= {row['__alert']})"),
        ]
    if kind == "summaries":
        return [
            *_id_checks(gxe, ("report_id", "summary", "model_version")),
            Check(gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS)),
                  lambda row: f"{row.get('domain')!r} is not one of {', '.join(DOMAINS)}"),
            # never longer than the source (a one-line report may be its own summary: not an error)
            Check(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="_source__chars", column_B="_summary__chars",
                                                              or_equal=True),
                  lambda row: f"summary has {row['_summary__chars']} chars, more than the source's "
                              f"{row['_source__chars']}"),
        ]
    if kind == "reports":
        return [
            *_id_checks(gxe, ("report_id", "text")),
            Check(gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS)),
                  lambda row: f"{row.get('domain')!r} is not one of {', '.join(DOMAINS)}"),
        ]
    raise ValueError(f"unknown validation kind {kind!r}")


KINDS = ("transactions", "scores", "summaries", "reports")
Engine = Literal["gx", "fast"]


@lru_cache(maxsize=None)
def checks_for(kind: str) -> tuple[Check, ...]:
    """The checks of one kind's suite, in suite order (built once)."""
    return tuple(_suite_checks(kind))


class Suites:
    """The GX context, one pandas data asset and one suite per kind, built once and reused (building
    a context takes seconds; validating a batch takes milliseconds). Thread-safe."""

    _instance: "Suites | None" = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = self.context.data_sources.add_pandas("argus")
        self.batches: dict[str, Any] = {}
        self.suites: dict[str, Any] = {}
        self.positions: dict[str, dict[str, int]] = {}  # expectation id -> position in checks_for(kind)
        for kind in KINDS:
            self.batches[kind] = source.add_dataframe_asset(kind).add_batch_definition_whole_dataframe(kind)
            suite = self.context.suites.add(gx.ExpectationSuite(name=f"argus.{kind}"))
            self.positions[kind] = {}
            for position, check in enumerate(checks_for(kind)):
                added = suite.add_expectation(check.expectation)
                self.positions[kind][added.id] = position
            self.suites[kind] = suite
        self._lock = threading.Lock()

    @classmethod
    def get(cls) -> "Suites":
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def failing_rows(self, kind: str, frame: Any, parameters: Mapping[str, Any]) -> Failed:
        """Validate `frame` against the `kind` suite: {row position: [(check position, error or None)]}."""
        with self._lock:  # GX contexts are not documented as thread-safe
            batch = self.batches[kind].get_batch(batch_parameters={"dataframe": frame})
            result = batch.validate(self.suites[kind], result_format={"result_format": "COMPLETE"},
                                    expectation_parameters=dict(parameters))
        failed: Failed = {}
        for res in result.results:
            if res.success:
                continue
            check = self.positions[kind][res.expectation_config.id]
            if res.exception_info and res.exception_info.get("raised_exception"):
                # the expectation could not run at all (e.g. an incomparable column): every row fails
                msg = " ".join(str(res.exception_info.get("exception_message")).split())[:200]
                for i in range(len(frame)):
                    failed.setdefault(i, []).append((check, f"could not be evaluated ({msg})"))
                continue
            for index in res.result.get("unexpected_index_list") or []:
                i = int(index[ROW] if isinstance(index, Mapping) else index)
                failed.setdefault(i, []).append((check, None))
        return failed


Failed = dict[int, list[tuple[int, "str | None"]]]


def fast_failing_rows(kind: str, columns: Mapping[str, Any], parameters: Mapping[str, Any]) -> Failed:
    """The same checks as the GX suite, evaluated directly over the columns (lists or arrays, or a
    pandas frame) with GX's semantics: column-map expectations skip missing values (None, NaN);
    pair expectations follow `ignore_row_if`. For latency-critical micro-batches: GX spends ~0.1 s
    per batch building its metric graph and a pandas frame costs ~10 ms more than the checks
    themselves (see benchmarks/validation_cost.py); tests assert both engines fail the same rows
    the same way."""
    import numpy as np

    def param(value: Any) -> Any:
        return parameters[value["$PARAMETER"]] if isinstance(value, Mapping) and "$PARAMETER" in value else value

    failed: Failed = {}
    for position, check in enumerate(checks_for(kind)):
        cfg = check.expectation.configuration
        kw, kind_ = cfg.kwargs, cfg.type
        if "column" in kw:
            col = _values(columns[kw["column"]])
            present = _present(col)
            if kind_ == "expect_column_values_to_not_be_null":
                bad = ~present
            elif kind_ == "expect_column_values_to_be_between":
                values = _floats(col)
                ok = np.ones(len(col), dtype=bool)
                low, high = param(kw.get("min_value")), param(kw.get("max_value"))
                with np.errstate(invalid="ignore"):
                    if low is not None:
                        ok &= values >= low
                    if high is not None:
                        ok &= values <= high
                bad = present & ~ok
            elif kind_ == "expect_column_values_to_match_regex":
                bad = present & ~_matches(col, present, kw["regex"])
            elif kind_ == "expect_column_values_to_be_in_set":
                allowed = set(kw["value_set"])
                bad = present & ~np.fromiter((_in(v, allowed) for v in col), bool, len(col))
            else:
                raise NotImplementedError(f"fast engine: {kind_}")
        else:
            a, b = _values(columns[kw["column_A"]]), _values(columns[kw["column_B"]])
            a_missing, b_missing = ~_present(a), ~_present(b)
            ignore = {"both_values_are_missing": a_missing & b_missing,
                      "either_value_is_missing": a_missing | b_missing,
                      "neither": np.zeros(len(a), dtype=bool)}[kw.get("ignore_row_if") or "both_values_are_missing"]
            if kind_ == "expect_column_pair_values_to_be_equal":
                ok = np.fromiter((not (m or n) and x == y for x, y, m, n in zip(a, b, a_missing, b_missing)),
                                 bool, len(a))  # pandas: a missing value equals nothing
            elif kind_ == "expect_column_pair_values_a_to_be_greater_than_b":
                ge = kw.get("or_equal")
                ok = np.fromiter(((x >= y if ge else x > y) if not (m or n) else False
                                  for x, y, m, n in zip(a, b, a_missing, b_missing)), bool, len(a))
            else:
                raise NotImplementedError(f"fast engine: {kind_}")
            bad = ~ignore & ~ok
        for i in np.flatnonzero(bad).tolist():
            failed.setdefault(i, []).append((position, None))
    return failed


def _values(column: Any) -> Any:
    """A column as a list or a 1-D numpy array (a pandas Series -> its values)."""
    return column.to_numpy() if hasattr(column, "to_numpy") else column


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (type(v).__name__ in ("NaTType", "NAType"))


def _present(col: Any) -> Any:
    import numpy as np

    if isinstance(col, np.ndarray) and col.dtype.kind == "f":
        return ~np.isnan(col)
    if isinstance(col, np.ndarray) and col.dtype.kind in "iub":
        return np.ones(len(col), dtype=bool)
    return np.fromiter((not _is_missing(v) for v in col), bool, len(col))


def _floats(col: Any) -> Any:
    import numpy as np

    if isinstance(col, np.ndarray) and col.dtype.kind in "fiu":
        return col.astype(float, copy=False)
    return np.fromiter((math.nan if _is_missing(v) else float(v) for v in col), float, len(col))


def _in(v: Any, allowed: set[Any]) -> bool:
    try:
        return v in allowed
    except TypeError:  # unhashable: never a member
        return False


def _matches(col: Any, present: Any, regex: str) -> Any:
    """re.search over str(value), as pandas' str.contains; `\\S` (non-blank) without the regex engine:
    Python's `\\s` is exactly the characters str.isspace() accepts."""
    import re

    import numpy as np

    if regex == NON_BLANK:
        test = lambda s: bool(s) and not s.isspace()  # noqa: E731
    else:
        test = re.compile(regex).search
    return np.fromiter((bool(p) and bool(test(v if isinstance(v, str) else str(v))) for v, p in zip(col, present)),
                       bool, len(col))


# --- frames ---------------------------------------------------------------------------------------

def _records(rows: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """(the rows as given, one plain dict per row)."""
    if hasattr(rows, "to_dicts"):  # polars
        plain = rows.to_dicts()
        return plain, plain
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas
        plain = rows.to_dict(orient="records")
        return plain, plain
    given = list(rows)
    # dicts are only read: no copy (a batch of 1,000 rows spent ~1 ms copying them)
    plain = [r if type(r) is dict else r.model_dump(mode="python") if hasattr(r, "model_dump") else dict(r)
             for r in given]
    return given, plain


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _epoch(value: Any) -> float:
    """Seconds since the epoch of an aware or naive (= UTC) datetime or ISO-8601 string; NaN if not."""
    try:
        if isinstance(value, str):
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
        if hasattr(value, "to_pydatetime"):  # pandas Timestamp
            return _epoch(value.to_pydatetime())
    except (ValueError, TypeError, OverflowError):
        pass
    return math.nan


def _value(v: Any) -> Any:
    return v.value if hasattr(v, "value") and not isinstance(v, (int, float, str)) else v


def _frame(columns: dict[str, list[Any]]) -> Any:
    import pandas as pd

    n = len(next(iter(columns.values()))) if columns else 0
    return pd.DataFrame(columns, index=pd.RangeIndex(n, name=ROW))


def _run(kind: str, rows: Any, columns: Callable[[list[dict[str, Any]]], dict[str, list[Any]]],
         parameters: Mapping[str, Any], context: Mapping[str, Any], engine: Engine) -> ValidationResult:
    if engine not in ("gx", "fast"):
        raise ValueError(f"unknown validation engine {engine!r} (gx or fast)")
    given, plain = _records(rows)
    if not plain:
        return ValidationResult()
    cols = columns(plain)
    if engine == "gx":
        failed = Suites.get().failing_rows(kind, _frame(cols), parameters)
    else:
        failed = fast_failing_rows(kind, cols, parameters)
    if not failed:
        return ValidationResult(good_rows=given)
    checks = checks_for(kind)
    result = ValidationResult()
    for i, row in enumerate(given):
        found = failed.get(i)
        if not found:
            result.good_rows.append(row)
            continue
        view = {**plain[i], **{k: v[i] for k, v in cols.items() if k.startswith("_")}, **context}
        reasons = [f"{checks[p].name}: {error or checks[p].describe(view)}" for p, error in sorted(found)]
        result.failures.append((row, "; ".join(reasons)))
    return result


# --- public API -----------------------------------------------------------------------------------

def _fraud_settings() -> Any:
    from pipelines.settings import get_settings

    return get_settings().fraud


def validate_transactions(rows: Iterable[Any] | Any, *, max_amount: float | None = None,
                          future_tolerance_s: float = 300.0, now: datetime | None = None,
                          engine: Engine = "gx") -> ValidationResult:
    """Check inbound transactions (Transaction models, dicts, or a polars/pandas frame).
    max_amount defaults to settings.fraud.max_amount; a timestamp may be at most
    `future_tolerance_s` after `now` (default: the current time)."""
    max_amount = _fraud_settings().max_amount if max_amount is None else max_amount
    latest = (now or datetime.now(timezone.utc)).timestamp() + future_tolerance_s

    def columns(plain: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {"transaction_id": [_text(r.get("transaction_id")) for r in plain],
                "customer_id": [_text(r.get("customer_id")) for r in plain],
                "terminal_id": [_text(r.get("terminal_id")) for r in plain],
                "amount": [_number(r.get("amount")) for r in plain],
                "_timestamp__epoch": [_epoch(r.get("timestamp")) for r in plain]}

    return _run("transactions", rows, columns, {"max_amount": float(max_amount), "latest_epoch": latest},
                {"__max_amount": max_amount, "__tolerance_s": future_tolerance_s}, engine)


def expected_decision(score: float, alert_threshold: float, review_threshold: float) -> str | None:
    """The decision the thresholds give a score (None for a missing/NaN score)."""
    if score is None or math.isnan(score):
        return None
    return "decline" if score >= alert_threshold else "review" if score >= review_threshold else "approve"


def validate_scores(rows: Iterable[Any] | Any, *, alert_threshold: float | None = None,
                    review_threshold: float | None = None, engine: Engine = "gx") -> ValidationResult:
    """Check fraud scores (FraudScore models, dicts, or a frame). Thresholds default to
    settings.fraud.alert_threshold / review_threshold."""
    fraud = _fraud_settings()
    alert = fraud.alert_threshold if alert_threshold is None else alert_threshold
    review = fraud.review_threshold if review_threshold is None else review_threshold

    def columns(plain: list[dict[str, Any]]) -> dict[str, list[Any]]:
        scores = [_number(r.get("score")) for r in plain]
        return {"transaction_id": [_text(r.get("transaction_id")) for r in plain],
                "model_version": [_text(r.get("model_version")) for r in plain],
                "score": scores,
                "decision": [_text(_value(r.get("decision"))) for r in plain],
                "_decision__expected": [expected_decision(s, alert, review) for s in scores]}

    return _run("scores", rows, columns, {}, {"__alert": alert, "__review": review}, engine)


def validate_summaries(rows: Iterable[Any] | Any, sources: Mapping[str, str] | None = None, *,
                       engine: Engine = "gx") -> ValidationResult:
    """Check report summaries (ReportSummary models, dicts, or a frame). Each summary's source
    length comes from `sources` (report_id -> source text) or the row's own `source_text` /
    `source_chars`; a row with neither is a programming error (ValueError)."""
    sources = sources or {}

    def source_chars(r: Mapping[str, Any]) -> int:
        rid = _text(r.get("report_id"))
        if rid in sources:
            return len(sources[rid])
        if r.get("source_text") is not None:
            return len(r["source_text"])
        if r.get("source_chars") is not None:
            return int(r["source_chars"])
        raise ValueError(f"validate_summaries: no source text for report {rid!r} (pass sources=)")

    def columns(plain: list[dict[str, Any]]) -> dict[str, list[Any]]:
        summaries = [_text(r.get("summary")) for r in plain]
        return {"report_id": [_text(r.get("report_id")) for r in plain],
                "summary": summaries,
                "model_version": [_text(r.get("model_version")) for r in plain],
                "domain": [_text(_value(r.get("domain"))) for r in plain],
                "_summary__chars": [len(s) for s in summaries],
                "_source__chars": [source_chars(r) for r in plain]}

    return _run("summaries", rows, columns, {}, {}, engine)


def validate_reports(rows: Iterable[Any] | Any, *, engine: Engine = "gx") -> ValidationResult:
    """Check inbound reports (Report models, dicts, or a frame): id and text non-empty, domain known."""

    def columns(plain: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {"report_id": [_text(r.get("report_id")) for r in plain],
                "text": [_text(r.get("text")) for r in plain],
                "domain": [_text(_value(r.get("domain"))) for r in plain]}

    return _run("reports", rows, columns, {}, {}, engine)
