"""`argus eval fraud`: the fraud evaluation a risk team reads, as one self-contained HTML file.

Input: the Parquet `argus fraud replay` writes (transaction_id, timestamp, customer_id, score, and
`label` when its input had one; model_version and terminal_id are used when present). Labels come
from that `label` column or from a labels file: the handbook CSV(.gz) or a Parquet with its columns
(TRANSACTION_ID, TX_FRAUD and, when present, TX_FRAUD_SCENARIO; ids become `hb-<TRANSACTION_ID>` as
in pipelines/handbook.py), or a Parquet with the Argus columns (transaction_id, label|is_fraud
[, fraud_scenario]). A baseline file (another model's scores of the same transactions) is set beside
the model on every figure, both evaluated on the transactions the two files share.

What is computed (plain functions of numpy arrays, below):
* average precision and the precision-recall curve; AUC-ROC;
* precision and recall at the review and alert thresholds (settings `fraud.review_threshold`,
  `fraud.alert_threshold`: a score at or above the threshold is flagged);
* calibration: a reliability diagram (10 equal-width score bins: mean score vs fraud rate), the
  Brier score and the expected calibration error (bin-weighted |mean score - fraud rate|);
* recall per fraud kind (scenario) when the top 1% of transactions by score are flagged;
* Card Precision@100 per day: each day, the 100 customers with the highest score that day (their
  highest), the share of them with a fraud that day (divided by 100 even on a day with fewer
  customers, as the handbook and models/train_fraud.py do).

Bad input (a missing or unreadable file, a missing column, a score outside [0, 1] or not finite, a
missing label, a duplicated id, no transaction in the window) raises FraudReportError: one line
saying what and where, never a traceback.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.errors import ArgusError

FLAG_SHARE = 0.01  # recall per kind: the top 1% of transactions by score are flagged
CARDS_PER_DAY = 100  # Card Precision@100: the investigators' daily budget
CALIBRATION_BINS = 10


class FraudReportError(ArgusError):
    exit_code = 6


# --- metrics (numpy in, numbers out) ---------------------------------------------------------------

def _sklearn_metrics() -> Any:
    from models.extras import require

    return require("sklearn.metrics", "eval", "argus eval fraud (AP, AUC-ROC, PR curve)")


def average_precision(y: np.ndarray, p: np.ndarray) -> float | None:
    """Average precision (area under the precision-recall steps); None without a fraud."""
    average_precision_score = _sklearn_metrics().average_precision_score
    y = np.asarray(y, bool)
    if not y.any():
        return None
    return float(average_precision_score(y, p))


def auc_roc(y: np.ndarray, p: np.ndarray) -> float | None:
    roc_auc_score = _sklearn_metrics().roc_auc_score
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, p))


def precision_recall_at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Flag every score >= threshold: precision (None when nothing is flagged), recall (None without
    a fraud) and the share of transactions flagged."""
    y = np.asarray(y, bool)
    flagged = np.asarray(p) >= threshold
    hits = int((flagged & y).sum())
    n_flagged, n_fraud = int(flagged.sum()), int(y.sum())
    return {"threshold": float(threshold), "precision": hits / n_flagged if n_flagged else None,
            "recall": hits / n_fraud if n_fraud else None, "flagged_share": n_flagged / len(y) if len(y) else 0.0}


def reliability(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Equal-width score bins: per bin the count, mean score and fraud rate (None for an empty bin);
    the expected calibration error (bin-weighted |mean score - fraud rate|) and the Brier score."""
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    score_sum = np.bincount(which, weights=p, minlength=bins)
    fraud_sum = np.bincount(which, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.where(counts > 0, score_sum / np.maximum(counts, 1), np.nan)
        rate = np.where(counts > 0, fraud_sum / np.maximum(counts, 1), np.nan)
    n = max(1, len(y))
    ece = float(np.nansum(counts / n * np.abs(mean_score - rate)))
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "counts": counts.tolist(),
            "mean_score": [None if math.isnan(v) else float(v) for v in mean_score],
            "fraud_rate": [None if math.isnan(v) else float(v) for v in rate],
            "ece": ece, "brier": float(np.mean((p - y) ** 2)) if len(y) else 0.0}


def flagged_top(p: np.ndarray, share: float = FLAG_SHARE) -> np.ndarray:
    """A mask of the ceil(share * n) highest scores (ties broken by position, first wins)."""
    p = np.asarray(p)
    k = min(len(p), math.ceil(share * len(p)))
    mask = np.zeros(len(p), bool)
    if k:
        mask[np.argsort(-p, kind="stable")[:k]] = True
    return mask


def recall_per_kind(y: np.ndarray, p: np.ndarray, kind: np.ndarray, share: float = FLAG_SHARE) -> dict[str, dict[str, Any]]:
    """For each fraud kind: its frauds, how many of them are among the top `share` of transactions
    by score, and that recall. Kinds of genuine transactions are ignored."""
    y = np.asarray(y, bool)
    kind = np.asarray(kind, object)
    flagged = flagged_top(p, share)
    out: dict[str, dict[str, Any]] = {}
    for k in sorted({str(v) for v in kind[y]}):
        of_kind = y & (kind.astype(str) == k)
        n = int(of_kind.sum())
        caught = int((of_kind & flagged).sum())
        out[k] = {"frauds": n, "caught": caught, "recall": caught / n if n else None}
    return out


def card_precision_per_day(day: np.ndarray, customer: np.ndarray, p: np.ndarray, y: np.ndarray,
                           k: int = CARDS_PER_DAY) -> pl.DataFrame:
    """Per day (sorted): the k customers with the highest score that day (their highest), and the
    share of them with a fraud that day, over k (columns day, cards, frauds_in_top, cp)."""
    frame = pl.DataFrame({"day": day, "customer": customer, "score": np.asarray(p, float), "fraud": np.asarray(y, bool)})
    per_card = frame.group_by("day", "customer").agg(pl.col("score").max(), pl.col("fraud").any())
    top = per_card.sort(["day", "score", "customer"], descending=[False, True, False]).group_by(
        "day", maintain_order=True).head(k)
    return (top.group_by("day", maintain_order=True)
            .agg(pl.len().alias("cards"), pl.col("fraud").sum().cast(pl.Int64).alias("frauds_in_top"))
            .with_columns((pl.col("frauds_in_top") / k).alias("cp")).sort("day"))


@dataclass
class Evaluation:
    """Every figure of one model's scores over the evaluated transactions."""

    name: str
    rows: int
    frauds: int
    ap: float | None
    auc: float | None
    at_review: dict[str, float | None]
    at_alert: dict[str, float | None]
    calibration: dict[str, Any]
    per_kind: dict[str, dict[str, Any]] | None
    cp_per_day: pl.DataFrame
    recall_at_share: float | None
    pr_curve: tuple[np.ndarray, np.ndarray] = field(repr=False, default=(np.array([]), np.array([])))

    @property
    def cp_mean(self) -> float | None:
        return float(self.cp_per_day["cp"].mean()) if self.cp_per_day.height else None

    def headline(self) -> dict[str, Any]:
        return {"model": self.name, "transactions": self.rows, "frauds": self.frauds, "AP": self.ap, "AUC": self.auc,
                f"precision@{self.at_review['threshold']:g}": self.at_review["precision"],
                f"recall@{self.at_review['threshold']:g}": self.at_review["recall"],
                f"precision@{self.at_alert['threshold']:g}": self.at_alert["precision"],
                f"recall@{self.at_alert['threshold']:g}": self.at_alert["recall"],
                "recall@1% flagged": self.recall_at_share, "CP@100": self.cp_mean,
                "Brier": self.calibration["brier"], "ECE": self.calibration["ece"]}


def evaluate(frame: pl.DataFrame, name: str, review_threshold: float, alert_threshold: float) -> Evaluation:
    """`frame`: transaction_id, timestamp, customer_id, score, label [, scenario]."""
    precision_recall_curve = _sklearn_metrics().precision_recall_curve
    y = frame["label"].to_numpy().astype(bool)
    p = frame["score"].to_numpy().astype(float)
    curve = precision_recall_curve(y, p) if y.any() else (np.array([]), np.array([]), None)
    flagged = flagged_top(p)
    days = frame["timestamp"].dt.date().to_numpy()
    return Evaluation(
        name=name, rows=frame.height, frauds=int(y.sum()), ap=average_precision(y, p), auc=auc_roc(y, p),
        at_review=precision_recall_at(y, p, review_threshold), at_alert=precision_recall_at(y, p, alert_threshold),
        calibration=reliability(y, p),
        per_kind=recall_per_kind(y, p, frame["scenario"].to_numpy()) if "scenario" in frame.columns else None,
        cp_per_day=card_precision_per_day(days, frame["customer_id"].to_numpy(), p, y),
        recall_at_share=float((flagged & y).sum() / y.sum()) if y.any() else None,
        pr_curve=(curve[1], curve[0]))


# --- inputs ---------------------------------------------------------------------------------------

SCORE_COLUMNS = ("transaction_id", "timestamp", "customer_id", "score")


def _read(path: Path, what: str, csv: bool = False) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FraudReportError(f"{what} file not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(path)
        if csv and name.endswith((".csv", ".csv.gz")):
            return pl.read_csv(path, infer_schema_length=10_000)
    except Exception as exc:  # noqa: BLE001 - any reader failure is "this file is not what it says"
        raise FraudReportError(f"cannot read {what} file {path.name}: {type(exc).__name__}") from None
    raise FraudReportError(f"unsupported {what} file {path.name}: use .parquet" + (" or .csv/.csv.gz" if csv else ""))


def _need(frame: pl.DataFrame, columns: tuple[str, ...], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FraudReportError(f"{what} file {Path(path).name} lacks column(s) {', '.join(missing)}")


def load_scores(path: Path) -> pl.DataFrame:
    """The scores file, checked: transaction_id (text, unique), timestamp (UTC), customer_id (text),
    score (finite, in [0, 1]), plus label, scenario and model_version when present."""
    frame = _read(path, "scores")
    _need(frame, SCORE_COLUMNS, path, "scores")
    if frame.height == 0:
        raise FraudReportError(f"scores file {Path(path).name} has no rows")
    try:
        out = frame.select(
            pl.col("transaction_id").cast(pl.String), _as_utc(frame["timestamp"]).alias("timestamp"),
            pl.col("customer_id").cast(pl.String), pl.col("score").cast(pl.Float64, strict=True),
            *([pl.col("label").cast(pl.Boolean, strict=True)] if "label" in frame.columns else []),
            *([pl.col("fraud_scenario").cast(pl.String).alias("scenario")] if "fraud_scenario" in frame.columns else []),
            *([pl.col("model_version").cast(pl.String)] if "model_version" in frame.columns else []))
    except FraudReportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a column of the wrong type
        raise FraudReportError(f"scores file {Path(path).name}: a column has the wrong type ({type(exc).__name__})") from None
    _check_scores(out, Path(path).name)
    return out


def _as_utc(ts: pl.Series) -> pl.Series:
    try:
        if ts.dtype == pl.String:
            ts = ts.str.to_datetime(time_zone="UTC")
        if not isinstance(ts.dtype, pl.Datetime):
            raise TypeError
        return ts.dt.replace_time_zone("UTC") if ts.dtype.time_zone is None else ts.dt.convert_time_zone("UTC")
    except Exception:  # noqa: BLE001
        raise FraudReportError("the timestamp column is not a date-time") from None


def _check_scores(frame: pl.DataFrame, name: str) -> None:
    for col in ("transaction_id", "timestamp", "customer_id", "score"):
        nulls = frame[col].null_count()
        if nulls:
            raise FraudReportError(f"{name}: {nulls:,} row(s) without {col}")
    score = frame["score"]
    bad = int((~score.is_finite() | (score < 0) | (score > 1)).sum())
    if bad:
        raise FraudReportError(f"{name}: {bad:,} score(s) not a number in [0, 1]")
    dupes = frame.height - frame["transaction_id"].n_unique()
    if dupes:
        raise FraudReportError(f"{name}: {dupes:,} duplicated transaction_id(s)")


def load_labels(path: Path) -> pl.DataFrame:
    """transaction_id, label [, scenario] from the handbook (CSV or Parquet with TRANSACTION_ID,
    TX_FRAUD [, TX_FRAUD_SCENARIO]) or an Argus Parquet (transaction_id, label|is_fraud [, fraud_scenario])."""
    from pipelines.handbook import HANDBOOK_SCENARIOS

    frame = _read(path, "labels", csv=True)
    name = Path(path).name
    try:
        if "TX_FRAUD" in frame.columns:
            _need(frame, ("TRANSACTION_ID",), path, "labels")
            cols = [("hb-" + pl.col("TRANSACTION_ID").cast(pl.Int64, strict=True).cast(pl.String)).alias("transaction_id"),
                    pl.col("TX_FRAUD").cast(pl.Int8, strict=True).alias("code")]
            if "TX_FRAUD_SCENARIO" in frame.columns:
                cols.append(pl.col("TX_FRAUD_SCENARIO").cast(pl.Int64, strict=True).replace_strict(
                    HANDBOOK_SCENARIOS, default="unknown", return_dtype=pl.String).alias("scenario"))
            out = frame.select(cols)
            if out["code"].null_count() or not out["code"].is_in([0, 1]).all():
                raise FraudReportError(f"labels file {name}: TX_FRAUD must be 0 or 1")
            out = out.with_columns((pl.col("code") == 1).alias("label")).drop("code")
        else:
            label = "label" if "label" in frame.columns else "is_fraud"
            if "transaction_id" not in frame.columns or label not in frame.columns:
                raise FraudReportError(f"labels file {name} has neither the handbook's TRANSACTION_ID and TX_FRAUD "
                                       "nor transaction_id and label")
            out = frame.select(pl.col("transaction_id").cast(pl.String), pl.col(label).cast(pl.Boolean, strict=True).alias("label"),
                               *([pl.col("fraud_scenario").cast(pl.String).alias("scenario")]
                                 if "fraud_scenario" in frame.columns else []))
    except FraudReportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a column of the wrong type
        raise FraudReportError(f"labels file {name}: a column has the wrong type ({type(exc).__name__})") from None
    if out["transaction_id"].null_count() or out["label"].null_count():
        raise FraudReportError(f"labels file {name}: rows without a transaction id or label")
    if out.height != out["transaction_id"].n_unique():
        raise FraudReportError(f"labels file {name}: duplicated transaction ids")
    return out


def labelled(scores: pl.DataFrame, labels: pl.DataFrame | None, name: str) -> pl.DataFrame:
    """The scores with their labels (from `labels` when given, else the file's own column)."""
    if labels is None:
        if "label" not in scores.columns:
            raise FraudReportError(f"{name} has no label column: pass --labels (the handbook CSV or a labels Parquet)")
        if scores["label"].null_count():
            raise FraudReportError(f"{name}: {scores['label'].null_count():,} row(s) without a label")
        return scores
    joined = scores.drop([c for c in ("label", "scenario") if c in scores.columns]).join(
        labels, on="transaction_id", how="left")
    missing = joined["label"].null_count()
    if missing:
        raise FraudReportError(f"{missing:,} scored transaction(s) of {name} have no label in the labels file")
    return joined


def window(frame: pl.DataFrame, start: str | None, end: str | None) -> pl.DataFrame:
    """Transactions in [start, end) (dates or date-times, UTC)."""
    for bound, op in ((start, "ge"), (end, "lt")):
        if bound is None:
            continue
        try:
            dt = datetime.fromisoformat(bound)
        except ValueError:
            raise FraudReportError(f"not a date: {bound!r} (use YYYY-MM-DD)") from None
        dt = dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        frame = frame.filter(getattr(pl.col("timestamp"), op)(dt))
    return frame


# --- the report -------------------------------------------------------------------------------------

@dataclass
class FraudReport:
    model: Evaluation
    baseline: Evaluation | None
    window: tuple[str, str]
    dropped: int  # transactions in the window the baseline did not score (left out of both)

    def headlines(self) -> list[dict[str, Any]]:
        return [e.headline() for e in (self.model, self.baseline) if e is not None]


def build_report(scores: Path, labels: Path | None = None, baseline: Path | None = None, *, start: str | None = None,
                 end: str | None = None, review_threshold: float = 0.2, alert_threshold: float = 0.5) -> FraudReport:
    """Load, check, join and evaluate (the model, and the baseline on the same transactions)."""
    label_frame = load_labels(labels) if labels is not None else None
    main = window(labelled(load_scores(scores), label_frame, Path(scores).name), start, end)
    other = None
    dropped = 0
    base_name = ""
    if baseline is not None:
        base = load_scores(baseline)
        base_name = _name(base, baseline)
        common = main.join(base.select("transaction_id", "score"), on="transaction_id", how="inner", suffix="_baseline")
        dropped = main.height - common.height  # in the window, scored by the model but not the baseline
        if common.height == 0:
            raise FraudReportError(f"the baseline {Path(baseline).name} scores none of the transactions of {Path(scores).name}")
        main = common.drop("score_baseline")
        other = common.with_columns(pl.col("score_baseline").alias("score")).drop("score_baseline")
    if main.height == 0:
        raise FraudReportError("no transaction in the evaluation window")
    first, last = main["timestamp"].min(), main["timestamp"].max()
    model = evaluate(main, _name(main, scores), review_threshold, alert_threshold)
    base_eval = evaluate(other, base_name, review_threshold, alert_threshold) if other is not None else None
    if base_eval is not None and base_eval.name == model.name:
        base_eval.name += " (baseline)"
    return FraudReport(model, base_eval, (str(first.date()), str(last.date())), dropped)


def _name(frame: pl.DataFrame, path: Path) -> str:
    if "model_version" in frame.columns and frame["model_version"].n_unique() == 1 and frame["model_version"][0]:
        return str(frame["model_version"][0])
    return Path(path).name.removesuffix(".parquet")


COLOURS = ("#1f5fa8", "#d4762c")


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(report: FraudReport) -> dict[str, str]:
    """Base64 PNGs: pr, calibration, kinds (when scenarios are known), cp."""
    from models.extras import require

    require("matplotlib", "eval", "argus eval fraud (charts)").use("Agg")
    import matplotlib.pyplot as plt

    evals = [e for e in (report.model, report.baseline) if e is not None]
    out: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for e, colour in zip(evals, COLOURS):
        recall, precision = e.pr_curve
        if len(recall):
            keep = np.unique(np.linspace(0, len(recall) - 1, min(len(recall), 3000)).astype(int))
            ax.plot(recall[keep], precision[keep], color=colour, label=f"{e.name} (AP {format_metric(e.ap)})")
        for at, marker in ((e.at_review, "o"), (e.at_alert, "s")):
            if at["precision"] is not None and at["recall"] is not None:
                ax.plot(at["recall"], at["precision"], marker, color=colour, markersize=8,
                        label=f"{e.name} at {at['threshold']:g}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, loc="lower left")
    out["pr"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for e, colour in zip(evals, COLOURS):
        c = e.calibration
        pts = [(m, r) for m, r in zip(c["mean_score"], c["fraud_rate"]) if m is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", color=colour, label=f"{e.name} (ECE {c['ece']:.3f})")
    ax.set(xlabel="mean score in bin", ylabel="observed fraud rate", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability ({CALIBRATION_BINS} score bins)")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, loc="upper left")
    out["calibration"] = _png(fig)

    if report.model.per_kind:
        kinds = list(report.model.per_kind)
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        width = 0.8 / len(evals)
        for i, (e, colour) in enumerate(zip(evals, COLOURS)):
            ax.bar([j + i * width for j in range(len(kinds))], [(e.per_kind or {}).get(k, {}).get("recall") or 0 for k in kinds],
                   width=width, color=colour, label=e.name)
        ax.set_xticks([j + width * (len(evals) - 1) / 2 for j in range(len(kinds))], kinds, rotation=15, fontsize=8)
        ax.set(ylabel="recall", ylim=(0, 1.02), title="Recall per fraud kind, top 1% of transactions flagged")
        ax.legend(fontsize=7)
        out["kinds"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for e, colour in zip(evals, COLOURS):
        cp = e.cp_per_day
        ax.plot(cp["day"].to_list(), cp["cp"].to_list(), "o-", markersize=3, color=colour,
                label=f"{e.name} (mean {format_metric(e.cp_mean)})")
    ax.set(ylabel="Card Precision@100", ylim=(0, 1.02), title="Card Precision@100 per day")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    out["cp"] = _png(fig)
    return out


def format_metric(value: Any, digits: int = 3) -> str:
    """A headline figure as the report and the terminal table show it."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_metric(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = ("body{font:14px/1.4 system-ui,sans-serif;max-width:62rem;margin:1rem auto;padding:0 1rem;color:#1b1b1b}"
         "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}"
         "th:first-child,td:first-child{text-align:left}img{max-width:100%}.note{color:#555}")


def render_html(report: FraudReport) -> str:
    """One self-contained page (images inline as data: URIs; no script, no link); every text escaped."""
    figs = figures(report)
    evals = [e for e in (report.model, report.baseline) if e is not None]
    heads = [e.headline() for e in evals]
    metric_names = [k for k in heads[0] if k != "model"]
    headline = _table(["metric", *[h["model"] for h in heads]], [[k, *[h[k] for h in heads]] for k in metric_names])
    thresholds = _table(["model", "threshold", "precision", "recall", "flagged share"],
                        [[e.name, at["threshold"], at["precision"], at["recall"], at["flagged_share"]]
                         for e in evals for at in (e.at_review, e.at_alert)])
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Fraud evaluation: "
             f"{html.escape(report.model.name)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Fraud evaluation: {html.escape(report.model.name)}"
             + (f" vs {html.escape(report.baseline.name)}" if report.baseline else "") + "</h1>",
             f"<p class='note'>{report.model.rows:,} transactions from {report.window[0]} to {report.window[1]} "
             f"({report.model.frauds:,} frauds)"
             + (f"; {report.dropped:,} transaction(s) the baseline did not score left out" if report.dropped else "")
             + ".</p>", "<h2>Headline</h2>", headline,
             "<h2>Precision-recall</h2>", f"<img alt='precision-recall curve' src='data:image/png;base64,{figs['pr']}'>",
             "<h2>At the review and alert thresholds</h2>",
             "<p class='note'>A transaction is flagged when its score is at or above the threshold.</p>", thresholds,
             "<h2>Calibration</h2>", f"<img alt='reliability diagram' src='data:image/png;base64,{figs['calibration']}'>",
             _table(["model", "Brier", "ECE"], [[e.name, e.calibration["brier"], e.calibration["ece"]] for e in evals]),
             _calibration_table(evals)]
    if "kinds" in figs:
        kinds = list(report.model.per_kind or {})
        parts += ["<h2>Recall per fraud kind at 1% flagged</h2>",
                  f"<img alt='recall per fraud kind' src='data:image/png;base64,{figs['kinds']}'>",
                  _table(["kind", "frauds", *[f"recall ({e.name})" for e in evals]],
                         [[k, report.model.per_kind[k]["frauds"], *[(e.per_kind or {}).get(k, {}).get("recall") for e in evals]]
                          for k in kinds])]
    else:
        parts.append("<p class='note'>No fraud kind column (TX_FRAUD_SCENARIO / fraud_scenario): recall per kind not shown.</p>")
    days = report.model.cp_per_day
    parts += ["<h2>Card Precision@100 per day</h2>", f"<img alt='card precision per day' src='data:image/png;base64,{figs['cp']}'>",
              _table(["day", *[e.name for e in evals]],
                     [[str(d), *[_cp_on(e, d) for e in evals]] for d in days["day"].to_list()]),
              "</body></html>"]
    return "".join(parts)


def _calibration_table(evals: list[Evaluation]) -> str:
    """One row per score bin: each model's transactions, mean score and fraud rate in it."""
    edges = evals[0].calibration["edges"]
    headers = ["score bin", *[f"{h} ({e.name})" for e in evals for h in ("transactions", "mean score", "fraud rate")]]
    rows = [[f"{lo:.1f}-{hi:.1f}", *[v for e in evals for v in (e.calibration["counts"][i], e.calibration["mean_score"][i],
                                                                e.calibration["fraud_rate"][i])]]
            for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]
    return _table(headers, rows)


def _cp_on(e: Evaluation, day: Any) -> float | None:
    hit = e.cp_per_day.filter(pl.col("day") == day)
    return float(hit["cp"][0]) if hit.height else None


def write_report(report: FraudReport, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report), encoding="utf-8")
    return out
