"""`argus eval summaries`: ROUGE of the summariser against reference summaries, next to LEAD-3 and TextRank.

Metrics (rouge-score, Porter stemming, F1 x 100): ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum (summary
sentences on separate lines), plus `figures_in_source` - the share of figures in system summaries that
the faithfulness checker finds in the source. Output: a rich table and, optionally, an HTML report
with an inline bar chart (matplotlib, base64 PNG) and the worst cases.

Through the front door: `--predictions out.jsonl|out.parquet` scores the rows `argus summarize` wrote
(joined on id; a row with an error, or a missing row, scores as an empty summary and counts in
`errors`) instead of running the summariser in-process. Baselines then also run at the argus
summary's length per document (`LEAD@argus`, `TextRank@argus`: sentences until its word count),
and at the reference's length (`LEAD@reference`, `TextRank@reference`: an oracle budget).

Chest radiographs (medical records whose document is a short chest findings text) also get the
clinical safety metrics of pipelines/clinical_metrics.py (false-normal rate, observation P/R/F1)
and a `constant-normal` baseline (the normal template for every study).
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
    errors: int = 0
    clinical: object = None  # ClinicalScores for radiology sets
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
        out["errors"] = self.errors
        if self.clinical is not None:
            out.update(self.clinical.row())
        return out


_SCORER = None


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """F1 of ROUGE-1/2/L/Lsum, stemmed; sentences are newline separated for Lsum."""
    global _SCORER
    if _SCORER is None:
        from models.extras import require

        rouge_scorer = require("rouge_score.rouge_scorer", "eval", "summary evaluation (ROUGE)")

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


def is_radiology(records: list[dict]) -> bool:
    """Most records are chest radiograph findings (medical, short, about the chest)."""
    from models.chest_findings import is_chest_radiograph

    hits = sum(1 for r in records if r.get("domain") == "medical" and is_chest_radiograph(r.get("document") or r.get("text") or ""))
    return hits > len(records) / 2


def evaluate(records: list[dict], systems: dict[str, Callable[[dict], str]], progress: bool = True,
             clinical: bool = False, cases: list[dict] | None = None, errors: Callable[[dict], bool] | None = None) -> list[dict]:
    """Score each system's summary of each record against its reference; one row per system.
    `clinical`: add the radiology safety metrics; `cases`: filled with the first system's per-document
    results (for the worst-cases list); `errors(rec)`: whether the first system failed on rec."""
    check_references(records)
    totals = {name: SystemScores(name) for name in systems}
    if clinical:
        from pipelines.clinical_metrics import ClinicalScores, label_study

        for t in totals.values():
            t.clinical = ClinicalScores()
    first = next(iter(systems), None)
    it: Iterable = records
    if progress:
        from tqdm import tqdm

        it = tqdm(records, desc="evaluating", unit="doc", mininterval=2.0)
    for rec in it:
        doc = rec.get("document") or rec.get("text")
        study = label_study(doc, rec["summary"]) if clinical else None
        for name, fn in systems.items():
            pred = fn(rec)
            found, total = figure_support_rate(pred, doc)
            scores = rouge(pred, rec["summary"])
            totals[name].add(scores, found, total)
            failed = bool(errors(rec)) if (errors is not None and name == first) else False
            totals[name].errors += failed
            case = totals[name].clinical.add(study, pred, str(rec.get("id"))) if study is not None else {}
            if cases is not None and name == first:
                cases.append({"id": str(rec.get("id")), "document": doc, "reference": rec["summary"], "summary": pred,
                              "rouge1": round(100 * scores["rouge1"], 2), "error": failed, **case})
    return [t.row() for t in totals.values()]


def baseline_systems() -> dict[str, Callable[[dict], str]]:
    return {
        "LEAD-3": lambda r: baseline_summary(r.get("document") or r["text"], "lead3"),
        "TextRank": lambda r: baseline_summary(r.get("document") or r["text"], "textrank"),
    }


def budget_baselines(words_of: Callable[[dict], int]) -> dict[str, Callable[[dict], str]]:
    """LEAD and TextRank taking sentences (best first) until `words_of(record)` words: the same length as argus."""
    from pipelines.baselines import textrank_scores
    from pipelines.sentences import split_sentences

    def pick(rec: dict, method: str) -> str:
        sents = [s.text for s in split_sentences(rec.get("document") or rec["text"])]
        if not sents:
            return ""
        order = list(range(len(sents)))
        if method == "textrank":
            scores = textrank_scores(sents)
            order.sort(key=lambda i: -scores[i])
        budget, used, chosen = max(1, words_of(rec)), 0, []
        for i in order:
            if used >= budget:
                break
            chosen.append(i)
            used += len(sents[i].split())
        return "\n".join(sents[i] for i in sorted(chosen))

    return {"LEAD@argus": lambda r: pick(r, "lead"), "TextRank@argus": lambda r: pick(r, "textrank")}


def read_predictions(paths: Iterable[str | Path]) -> dict[str, dict]:
    """The rows `argus summarize` wrote (.jsonl or .parquet), by id (last row per id wins)."""
    rows: dict[str, dict] = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise EvalInputError(f"predictions not found: {p}")
        if p.suffix == ".parquet":
            import polars as pl

            items = pl.read_parquet(p, columns=["id", "summary", "error", "model_version"]).to_dicts()
        else:
            items = read_records([p])
        for row in items:
            rows[str(row.get("id"))] = row
    return rows


def prediction_system(rows: dict[str, dict]) -> Callable[[dict], str]:
    def run(rec: dict) -> str:
        row = rows.get(str(rec.get("id")))
        return (row.get("summary") or "") if row and not row.get("error") else ""

    return run


def summariser_system(summarizer, mode: str, max_sentences: int, max_chars: int) -> Callable[[dict], str]:
    from pipelines.contracts import Domain, Report

    def run(rec: dict) -> str:
        domain = rec.get("domain") if rec.get("domain") in {d.value for d in Domain} else "finance"
        report = Report(report_id=str(rec.get("id", "doc")), domain=domain, text=rec.get("document") or rec["text"])
        return summarizer.summarize(report, mode=mode, max_sentences=max_sentences, max_chars=max_chars).summary

    return run


def chart_png(rows: list[dict]) -> bytes:
    from models.extras import require

    matplotlib = require("matplotlib", "eval", "the evaluation chart")
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


def _worst_html(cases: list[dict], n: int = 15) -> str:
    if not cases:
        return ""
    worst = sorted(cases, key=lambda c: (not c.get("error"), not c.get("false_normal"), c["rouge1"]))[:n]
    out = ["<h2>Worst cases (errors, then false normals, then lowest ROUGE-1)</h2><table>",
           "<tr><th>id</th><th>R-1</th><th>flags</th><th>document</th><th>reference</th><th>summary</th></tr>"]
    for c in worst:
        flags = [f for f in ("error", "false_normal") if c.get(f)]
        if "reference_positive" in c:
            flags.append(f"ref: {', '.join(c['reference_positive'])}; summary: {', '.join(c['summary_positive'])}")
        cells = [c["id"], str(c["rouge1"]), "; ".join(flags), c["document"][:600], c["reference"][:400], c["summary"][:400]]
        out.append("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    return "".join(out) + "</table>"


def write_html(rows: list[dict], path: str | Path, title: str, notes: str = "", cases: list[dict] | None = None) -> Path:
    from pipelines.clinical_metrics import CLINICAL_KEYS

    cols = ["system", "docs", *ROUGE_KEYS, "figures_in_source", "errors",
            *[k for k in CLINICAL_KEYS if any(k in r for r in rows)]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    img = base64.b64encode(chart_png(rows)).decode()
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
           f"<h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p><table><tr>{head}</tr>{body}</table>"
           f"<p><img alt='ROUGE chart' src='data:image/png;base64,{img}'></p>{_worst_html(cases or [])}</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out


def run_eval(inputs: list[str | Path], limit: int | None = None, mode: str = "extractive", checkpoint: str | Path | None = None,
             max_sentences: int | None = None, max_chars: int | None = None, report: str | Path | None = None,
             include_model: bool = True, progress: bool = True, predictions: list[str | Path] | None = None) -> list[dict]:
    """`predictions`: score the rows `argus summarize` wrote instead of running the summariser here."""
    records = read_records(inputs, limit)
    check_references(records)
    systems: dict[str, Callable[[dict], str]] = {}
    version = None
    errors = None
    if predictions:
        rows_by_id = read_predictions(predictions)
        versions = sorted({str(r.get("model_version")) for r in rows_by_id.values() if r.get("model_version")})
        version = ", ".join(versions) or "-"
        argus = prediction_system(rows_by_id)
        systems["argus"] = argus

        def errors(rec: dict) -> bool:
            row = rows_by_id.get(str(rec.get("id")))
            return row is None or bool(row.get("error")) or not (row.get("summary") or "").strip()
    elif include_model:
        from pipelines.report_summariser import Summarizer

        summarizer = Summarizer.load(checkpoint)
        version = summarizer.model_version
        argus = summariser_system(summarizer, mode, max_sentences, max_chars)
        systems[f"argus-{mode}"] = argus
    radiology = is_radiology(records)
    if radiology:
        from models.impression import DEFAULT_NORMAL

        systems["constant-normal"] = lambda r: DEFAULT_NORMAL[0]
    systems.update(baseline_systems())
    if systems and (predictions or include_model):
        memo: dict[str, int] = {}

        def words_of(rec: dict) -> int:
            key = str(rec.get("id"))
            if key not in memo:
                memo[key] = len(argus(rec).split())
            return memo[key]

        if not radiology:
            systems.update(budget_baselines(words_of))
            # the oracle length (the reference's word count): what a perfect budget would give the baselines
            systems.update({f"{k[:-6]}@reference": v for k, v in
                            budget_baselines(lambda r: len(r["summary"].split())).items()})
    cases: list[dict] = []
    rows = evaluate(records, systems, progress=progress, clinical=radiology, cases=cases, errors=errors)
    if version is not None:
        rows[0]["model_version"] = version
    if report:
        names = ", ".join(str(p) for p in inputs)
        model = f"model {version}; " if version else ""
        how = (f"predictions {', '.join(str(p) for p in predictions)} (argus summarize)" if predictions else
               f"mode {mode}, in-process; caps {max_sentences or 'budget'} sentences / {max_chars or 'budget'} chars")
        write_html(rows, report, "Argus summary evaluation",
                   f"inputs: {names}; {len(records)} documents; {model}{how}; baselines: 3 sentences, and @argus: "
                   "as many words as the argus summary; ROUGE F1 x 100 (rouge-score, stemmed)"
                   + ("; clinical: CheXpert-style labels by medspaCy ConText (pipelines/clinical_metrics.py)"
                      if radiology else ""), cases=cases if (predictions or include_model) else None)
    return rows


def heldout_metrics(model, held: list[dict], eval_docs: int | None = 200, gen_eval_docs: int = 0,
                    progress: bool = True) -> dict:
    """ROUGE per held-out source of a freshly trained model (extractive, and generative on a few docs)
    and the baselines: `argus train summariser` hands this to models.train_summariser."""
    from pipelines.report_summariser import Summarizer

    summarizer = Summarizer(model.lm, model.tokenizer, model.scorer.head, model.meta, model.device, writers=None)
    by_source: dict[str, list[dict]] = {}
    for r in held:
        by_source.setdefault(str(r.get("source") or r.get("domain") or "data"), []).append(r)
    results: dict = {}
    for source, recs in sorted(by_source.items()):
        recs = recs[:eval_docs] if eval_docs else recs
        systems = {"argus-extractive": summariser_system(summarizer, "extractive", 5, 1200), **baseline_systems()}
        rows = evaluate(recs, systems, progress=progress)
        if gen_eval_docs:
            rows += evaluate(recs[:gen_eval_docs], {"argus-generative": summariser_system(summarizer, "generative", 5, 1200)},
                             progress=progress)
        results[source] = rows
    return results
