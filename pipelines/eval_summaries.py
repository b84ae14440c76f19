"""`argus eval summaries`: ROUGE of the summariser against reference summaries, next to LEAD-3 and TextRank.

Metrics (rouge-score, Porter stemming, F1 x 100): ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum (summary
sentences on separate lines), plus `figures_in_source` - the share of figures in system summaries that
the faithfulness checker finds in the source. Output: a rich table and, optionally, an HTML report
with an inline bar chart (matplotlib, base64 PNG).
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.baselines import baseline_summary
from pipelines.errors import ArgusError
from pipelines.faithfulness import figure_support_rate

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class EvalInputError(ArgusError):
    exit_code = 6


@dataclass
class SystemScores:
    name: str
    n: int = 0
    sums: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in ROUGE_KEYS})
    figures_found: int = 0
    figures_total: int = 0

    def add(self, scores: dict[str, float], found: int, total: int) -> None:
        self.n += 1
        for k in ROUGE_KEYS:
            self.sums[k] += scores[k]
        self.figures_found += found
        self.figures_total += total

    def row(self) -> dict[str, float | str | int]:
        out: dict[str, float | str | int] = {"system": self.name, "docs": self.n}
        for k in ROUGE_KEYS:
            out[k] = round(100.0 * self.sums[k] / max(1, self.n), 2)
        out["figures_in_source"] = round(self.figures_found / self.figures_total, 4) if self.figures_total else 1.0
        return out


_SCORER = None


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """F1 of ROUGE-1/2/L/Lsum, stemmed; sentences are newline separated for Lsum."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    s = _SCORER.score(reference, prediction)
    return {k: s[k].fmeasure for k in ROUGE_KEYS}


def read_records(paths: Iterable[str | Path], limit: int | None = None) -> list[dict]:
    records: list[dict] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise EvalInputError(f"input not found: {p}")
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalInputError(f"{p}:{n}: not JSON ({exc.msg})") from None
                records.append(rec)
                if limit and len(records) >= limit:
                    return records
    return records


def check_references(records: list[dict]) -> None:
    if not records:
        raise EvalInputError("no records to evaluate")
    missing = sum(1 for r in records if not isinstance(r.get("summary"), str) or not r["summary"].strip())
    if missing:
        raise EvalInputError(f"{missing} of {len(records)} records have no reference 'summary'; "
                             "evaluation needs reference summaries (field 'summary')")
    bad = sum(1 for r in records if not isinstance(r.get("document") or r.get("text"), str))
    if bad:
        raise EvalInputError(f"{bad} records have no 'document' (or 'text') string")


def evaluate(records: list[dict], systems: dict[str, Callable[[dict], str]], progress: bool = True) -> list[dict]:
    """Score each system's summary of each record against its reference; one row per system."""
    check_references(records)
    totals = {name: SystemScores(name) for name in systems}
    it: Iterable = records
    if progress:
        from tqdm import tqdm

        it = tqdm(records, desc="evaluating", unit="doc", mininterval=2.0)
    for rec in it:
        doc = rec.get("document") or rec.get("text")
        for name, fn in systems.items():
            pred = fn(rec)
            found, total = figure_support_rate(pred, doc)
            totals[name].add(rouge(pred, rec["summary"]), found, total)
    return [t.row() for t in totals.values()]


def baseline_systems() -> dict[str, Callable[[dict], str]]:
    return {
        "LEAD-3": lambda r: baseline_summary(r.get("document") or r["text"], "lead3"),
        "TextRank": lambda r: baseline_summary(r.get("document") or r["text"], "textrank"),
    }


def summariser_system(summarizer, mode: str, max_sentences: int, max_chars: int) -> Callable[[dict], str]:
    from pipelines.contracts import Domain, Report

    def run(rec: dict) -> str:
        domain = rec.get("domain") if rec.get("domain") in {d.value for d in Domain} else "finance"
        report = Report(report_id=str(rec.get("id", "doc")), domain=domain, text=rec.get("document") or rec["text"])
        return summarizer.summarize(report, mode=mode, max_sentences=max_sentences, max_chars=max_chars).summary

    return run


def chart_png(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(ROUGE_KEYS))]
        ax.bar(xs, [row[k] for k in ROUGE_KEYS], width=width, label=str(row["system"]))
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(ROUGE_KEYS))], list(ROUGE_KEYS))
    ax.set_ylabel("F1 x 100")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_html(rows: list[dict], path: str | Path, title: str, notes: str = "") -> Path:
    cols = ["system", "docs", *ROUGE_KEYS, "figures_in_source"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    img = base64.b64encode(chart_png(rows)).decode()
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
           f"<h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p><table><tr>{head}</tr>{body}</table>"
           f"<p><img alt='ROUGE chart' src='data:image/png;base64,{img}'></p></body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out


def run_eval(inputs: list[str | Path], limit: int | None = None, mode: str = "extractive", checkpoint: str | Path | None = None,
             max_sentences: int = 5, max_chars: int = 1200, report: str | Path | None = None,
             include_model: bool = True, progress: bool = True) -> list[dict]:
    records = read_records(inputs, limit)
    check_references(records)
    systems: dict[str, Callable[[dict], str]] = {}
    if include_model:
        from models.summariser import Summarizer

        summarizer = Summarizer.load(checkpoint)
        version = summarizer.model_version
        systems[f"argus-{mode}"] = summariser_system(summarizer, mode, max_sentences, max_chars)
    systems.update(baseline_systems())
    rows = evaluate(records, systems, progress=progress)
    if include_model:
        rows[0]["model_version"] = version
    if report:
        names = ", ".join(str(p) for p in inputs)
        model = f"model {version}; " if include_model else ""
        write_html(rows, report, "Argus summary evaluation",
                   f"inputs: {names}; {len(records)} documents; {model}mode {mode}; argus: {max_sentences} sentences / "
                   f"{max_chars} chars, baselines: 3 sentences; ROUGE F1 x 100 (rouge-score, stemmed)")
    return rows
