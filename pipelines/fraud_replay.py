"""Score a whole transaction file in time order through the stream's state + scorer, with no broker.

The same `FraudState` and `FraudScorer` the stream job uses (the columnar fast path: one context
build and one forward per chunk, sequential semantics inside the chunk). One state for the whole
file (as a single-partition stream would have). When the file has labels, each chunk's labels are
handed to the state right after the chunk is scored; the state shows a label to a later
transaction only `labels_delay_days` after the labelled transaction (as a bank learns of a
chargeback about a week late), so no score ever sees its own label or a label "from the future".

Investigators are simulated too (`review_per_day` K, default 100: the CP@100 budget): each day the K
cards with the highest score that day get their true label for each of that day's transactions as a
disposition decided at the day's end + `review_latency_s` (models/review_simulator.py); the state
shows a disposition only to transactions at or after its decision time. Chunks never cross a UTC
day, so a day's verdicts are in the state before the next day is scored. A checkpoint without review
fields scores exactly as it would without them.

Inputs: a handbook CSV(.gz) (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT
[, TX_FRAUD]) or a Parquet file with the Argus columns (transaction_id, timestamp, customer_id,
terminal_id, amount [, is_fraud]). Output Parquet columns: transaction_id, timestamp, customer_id,
terminal_id, score, decision, model_version (+ label when present).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.errors import ArgusError


class ReplayError(ArgusError):
    pass


@dataclass
class ReplayResult:
    rows: int
    seconds: float
    model_version: str
    output: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    dispositions: int = 0  # simulated investigators' verdicts given to the state

    @property
    def tx_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def load_input(path: Path, limit: int | None = None) -> pl.DataFrame:
    """The file as one frame in time order with transaction_id, timestamp (UTC), customer_id,
    terminal_id, amount and, when present, label (bool)."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"input file not found: {path}")
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        from pipelines.handbook import load_frame

        frame = load_frame(path, limit=limit).rename({"is_fraud": "label"})
    elif name.endswith(".parquet"):
        frame = pl.read_parquet(path)
        if "is_fraud" in frame.columns and "label" not in frame.columns:
            frame = frame.rename({"is_fraud": "label"})
        missing = {"transaction_id", "timestamp", "customer_id", "terminal_id", "amount"} - set(frame.columns)
        if missing:
            raise ReplayError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
        if frame["timestamp"].dtype == pl.String:
            frame = frame.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))
        frame = frame.sort("timestamp", maintain_order=True)
        if limit is not None:
            frame = frame.head(limit)
    else:
        raise ReplayError(f"unsupported input {path.name}: use a handbook .csv/.csv.gz or a .parquet file")
    keep = [c for c in ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "label") if c in frame.columns]
    return frame.select(keep)


def columns(frame: pl.DataFrame):
    from models.fraud_state import TxColumns

    ts = frame["timestamp"]
    if ts.dtype == pl.Datetime:
        seconds = ts.dt.epoch("us").to_numpy().astype(np.float64) / 1e6
    else:
        seconds = ts.cast(pl.Float64).to_numpy()
    return TxColumns(frame["transaction_id"].cast(pl.String).to_list(), seconds,
                     frame["customer_id"].cast(pl.String).to_list(), frame["terminal_id"].cast(pl.String).to_list(),
                     frame["amount"].cast(pl.Float64).to_numpy())


def replay(input_path: Path, output: Path, checkpoint: Path | None = None, labels_delay_days: float | None = None,
           limit: int | None = None, chunk: int = 4096, alert_threshold: float = 0.5, review_threshold: float = 0.2,
           eval_start: str | None = None, eval_end: str | None = None, progress: bool = True,
           threads: int | None = None, review_per_day: int = 100, review_latency_s: float = 3600.0,
           device: str = "cpu") -> ReplayResult:
    """Score `input_path` into `output` (Parquet); AP/AUC/CP@100 over [eval_start, eval_end) when labelled.
    Simulated investigators (review_per_day > 0) need the file's labels."""
    from models.fraud_scorer import FraudScorer

    frame = load_input(input_path, limit)
    if review_per_day < 0 or not np.isfinite(review_latency_s) or review_latency_s < 0:
        raise ReplayError("--review-per-day must be >= 0 and --review-latency a finite time >= 0")
    scorer = FraudScorer.load(checkpoint, threads=threads, device=device)
    if frame.height == 0:
        raise ReplayError(f"{input_path} has no transactions")
    cols = columns(frame)
    labels = frame["label"].cast(pl.Boolean).to_numpy() if "label" in frame.columns else None
    state = scorer.new_state(**({} if labels_delay_days is None else {"labels_delay_days": labels_delay_days}))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from models.review_replay import replay_columns

    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task("replay", total=len(cols), rate="")
        scores, disposed = replay_columns(
            scorer.probabilities, state, cols, labels, review_per_day, review_latency_s, chunk,
            on_chunk=lambda done: bar.update(task, completed=done,
                                             rate=f"{done / (time.perf_counter() - t0):,.0f} tx/s"))
    seconds = time.perf_counter() - t0

    decision = np.where(scores >= alert_threshold, "decline", np.where(scores >= review_threshold, "review", "approve"))
    out = frame.select("transaction_id", "timestamp", "customer_id", "terminal_id").with_columns(
        pl.Series("score", scores), pl.Series("decision", decision), pl.lit(scorer.model_version).alias("model_version"))
    if labels is not None:
        out = out.with_columns(pl.Series("label", labels))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    out.write_parquet(output)
    result = ReplayResult(rows=len(cols), seconds=seconds, model_version=scorer.model_version, output=output,
                          dispositions=disposed)
    if labels is not None:
        result.metrics = evaluate(out, eval_start, eval_end)
    return result


def evaluate(scored: pl.DataFrame, start: str | None = None, end: str | None = None) -> dict[str, Any]:
    """AP, AUC-ROC and Card Precision@100 over [start, end) (dates, UTC); default: the last 28 days of the
    data (the validation weeks of the fraud model card)."""
    from models.extras import require

    sk_metrics = require("sklearn.metrics", "eval", "argus fraud replay (AP / AUC-ROC)")
    average_precision_score, roc_auc_score = sk_metrics.average_precision_score, sk_metrics.roc_auc_score

    ts = scored["timestamp"]
    last = ts.max()
    end_dt = _utc(end) if end else None
    start_dt = _utc(start) if start else None
    if start_dt is None:
        day = datetime(last.year, last.month, last.day, tzinfo=timezone.utc)
        from datetime import timedelta

        start_dt = day - timedelta(days=27)
    window = scored.filter(pl.col("timestamp") >= start_dt)
    if end_dt is not None:
        window = window.filter(pl.col("timestamp") < end_dt)
    y = window["label"].cast(pl.Int8).to_numpy()
    p = window["score"].to_numpy()
    if y.sum() == 0 or y.sum() == len(y):
        return {"window": [str(start_dt.date()), str(end_dt.date()) if end_dt else str(last.date())], "rows": len(y),
                "frauds": int(y.sum()), "ap": None, "auc": None, "cp100": None}
    return {"window": [str(start_dt.date()), str(end_dt.date()) if end_dt else str(last.date())], "rows": len(y),
            "frauds": int(y.sum()), "ap": float(average_precision_score(y, p)), "auc": float(roc_auc_score(y, p)),
            "cp100": card_precision(window)}


def card_precision(scored: pl.DataFrame, k: int = 100) -> float:
    """Card Precision@k: per UTC day, the k customers with the highest (max) score that day; the share of them
    with a fraud that day (over k, as the handbook counts it); the mean over days (the evaluation report's
    per-day figure, pipelines/fraud_report.py)."""
    from pipelines.fraud_report import card_precision_per_day

    per_day = card_precision_per_day(scored["timestamp"].dt.date().to_numpy(), scored["customer_id"].to_numpy(),
                                     scored["score"].to_numpy(), scored["label"].cast(pl.Boolean).to_numpy(), k)
    return float(per_day["cp"].mean())


def _utc(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
