"""`argus train writers`: fit the light summary writers from training pairs and write them to a folder.

    fit_writers(iu_xray=..., ectsum=..., pubmed=..., output="models/checkpoints/summary-writers")

* radiology impression writer (models/impression.py) on the IU X-ray pairs outside the held-out slice;
* finance sentence selector (models/sentence_selector.py): logistic regression over hashed n-grams and
  layout/figure features, on greedy ROUGE-oracle labels of ECTSum train (oracle over the compressed
  bullets, so the selector learns which bullets score);
* medical-article scorer: TextRank centrality + a lead prior whose weight is fitted on the PubMed
  sample's training split;
* length budgets per kind from the same training pairs (finance: bullets, medical articles: words).

Splits are by a hash of the record id (`heldout`), the same rule models/train_summariser.py uses:
IU X-ray and PubMed keep 10% / 25% out; ECTSum has its own val file. Deterministic (seed only feeds
the solver's shuffling).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from models.finance_bullets import analyst_bullet, call_context
from models.impression import PARAMS_FILE, fit as fit_impression
from models.sentence_selector import (CentralityLead, LengthBudget, SentenceSelector, budget_select, design_matrix,
                                     tokens)

HOLDOUT = {"iu-xray": 0.10, "pubmed": 0.25}


def heldout(rec: dict, fraction: float) -> bool:
    h = int(hashlib.sha1(str(rec.get("id", "")).encode()).hexdigest()[:8], 16)
    return (h % 10_000) < fraction * 10_000


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def split(records: list[dict], source: str) -> tuple[list[dict], list[dict]]:
    frac = HOLDOUT.get(source, 0.0)
    train = [r for r in records if not heldout(r, frac)]
    held = [r for r in records if heldout(r, frac)]
    return train, held


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(zip(*[toks[i:] for i in range(n)]))


def _f1(pred: Counter, ref: Counter) -> float:
    common = sum((pred & ref).values())
    if not common:
        return 0.0
    p, r = common / sum(pred.values()), common / sum(ref.values())
    return 2 * p * r / (p + r)


def oracle(units: list[str], reference: str, max_picks: int) -> list[int]:
    """Greedy ROUGE oracle: add the unit that most raises mean(R-1 F1, R-2 F1) until none does."""
    ref = tokens(reference)
    r1, r2 = _ngrams(ref, 1), _ngrams(ref, 2)
    toks = [tokens(u) for u in units]
    g1 = [_ngrams(t, 1) for t in toks]
    g2 = [_ngrams(t, 2) for t in toks]
    chosen: list[int] = []
    cur1, cur2, best = Counter(), Counter(), 0.0
    for _ in range(max_picks):
        cand, score = None, best
        for i in range(len(units)):
            if i in chosen or not toks[i] or not (g1[i].keys() & r1.keys()):
                continue
            s = (_f1(cur1 + g1[i], r1) + _f1(cur2 + g2[i], r2)) / 2
            if s > score:
                cand, score = i, s
        if cand is None:
            break
        chosen.append(cand)
        best = score
        cur1, cur2 = cur1 + g1[cand], cur2 + g2[cand]
    labels = [0] * len(units)
    for i in chosen:
        labels[i] = 1
    return labels


def doc_sentences(rec: dict) -> list[str]:
    """Training documents hold one sentence per line (ECTSum, the PubMed sample)."""
    return [line.strip() for line in (rec.get("document") or "").splitlines() if line.strip()]


def finance_units(sentences: list[str]) -> list[str]:
    """What the finance path would output for each sentence: its analyst bullet."""
    ctx = call_context(sentences)
    return [analyst_bullet(s, ctx) for s in sentences]


def fit_selector(records: list[dict], compress: bool, max_picks: int, seed: int, version: str,
                 c: float = 0.5) -> tuple[SentenceSelector, dict[str, Any]]:
    from scipy.sparse import vstack

    from models.extras import require

    LogisticRegression = require("sklearn.linear_model", "train", "fitting the sentence selector").LogisticRegression

    mats, ys = [], []
    for rec in records:
        sents = doc_sentences(rec)
        if not sents or not rec.get("summary"):
            continue
        units = finance_units(sents) if compress else sents
        picks = max_picks if max_picks > 0 else max(1, len(rec["summary"].splitlines()))
        ys.append(np.array(oracle(units, rec["summary"], picks)))
        mats.append(design_matrix(sents))
    x, y = vstack(mats, format="csr"), np.concatenate(ys)
    clf = LogisticRegression(C=c, max_iter=400, class_weight="balanced", solver="liblinear", random_state=seed)
    clf.fit(x, y)
    sel = SentenceSelector(clf.coef_[0].astype(np.float32), float(clf.intercept_[0]), version)
    return sel, {"documents": len(mats), "sentences": int(x.shape[0]), "positives": int(y.sum()), "C": c}


def fit_centrality_lead(records: list[dict], budget: LengthBudget, version: str) -> tuple[CentralityLead, dict]:
    """The lead weight (grid) that maximises mean ROUGE-1 at the fitted word budget on the training pairs.
    (A logistic selector on 58 articles did no better than centrality on held-out articles.)"""
    from models.extras import require

    rouge_scorer = require("rouge_score.rouge_scorer", "train", "fitting the summary writers")
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    docs = [(doc_sentences(r), r) for r in records if doc_sentences(r) and r.get("summary")]
    grid = {}
    for w in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0):
        sel = CentralityLead(w, version)
        total = 0.0
        for sents, r in docs:
            wb = int(round(budget.predict("medical", len(r["document"].split())) or 200))
            order = budget_select(sents, sel.score(sents), wb, 100_000)
            total += scorer.score(r["summary"], "\n".join(sents[i] for i in order))["rouge1"].fmeasure
        grid[w] = round(100 * total / max(1, len(docs)), 2)
    best = max(grid, key=lambda w: grid[w])
    return CentralityLead(best, version), {"documents": len(docs), "train_rouge1_by_lead_weight": grid}


def fit_writers(output: str | Path, iu_xray: str | Path | None = None, ectsum: str | Path | None = None,
                pubmed: str | Path | None = None, seed: int = 0, command: str | None = None) -> dict[str, Any]:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d")
    meta: dict[str, Any] = {"seed": seed, "command": command, "created": stamp, "parts": {}}
    budgets: dict[str, dict[str, float]] = {}
    if iu_xray is not None:
        from models.extras import require

        rouge_scorer = require("rouge_score.rouge_scorer", "train", "fitting the summary writers")
        scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
        train, held = split(read_jsonl(iu_xray), "iu-xray")
        params = fit_impression([(r["document"], r["summary"]) for r in train],
                                score_fn=lambda p, r: scorer.score(r, p)["rouge1"].fmeasure,
                                version=f"impression-{stamp}-s{seed}")
        (out / PARAMS_FILE).write_text(params.to_json())
        meta["parts"]["impression"] = {"train": len(train), "heldout": len(held), "max_lines": params.max_lines,
                                       "incidental_after_normal": params.incidental_after_normal,
                                       "normal": list(params.normal), "train_rouge1": params.fitted.get("train_score")}
    if ectsum is not None:
        train = read_jsonl(ectsum)
        sel, info = fit_selector(train, compress=True, max_picks=0, seed=seed, version=f"selector-finance-{stamp}-s{seed}")
        sel.save(out / "selector_finance.npz")
        meta["parts"]["selector_finance"] = info
        budgets["finance"] = LengthBudget.fit_kind([len(r["document"].split()) for r in train],
                                                   [len(r["summary"].splitlines()) for r in train], "bullets")
    if pubmed is not None:
        train, held = split(read_jsonl(pubmed), "pubmed")
        budgets["medical"] = LengthBudget.fit_kind([len(r["document"].split()) for r in train],
                                                   [len(r["summary"].split()) for r in train], "words")
        sel, info = fit_centrality_lead(train, LengthBudget(budgets), version=f"centrality-lead-{stamp}-s{seed}")
        sel.save(out / "selector_medical.json")
        (out / "selector_medical.npz").unlink(missing_ok=True)
        meta["parts"]["selector_medical"] = {**info, "heldout": len(held)}
    if budgets:
        old = LengthBudget.load(out).fits
        LengthBudget({**old, **budgets}).save(out / "length_budget.json")
        meta["parts"]["length_budget"] = budgets
    prev = json.loads((out / "writers.json").read_text()) if (out / "writers.json").is_file() else {}
    prev_parts = prev.get("parts", {})
    meta["parts"] = {**prev_parts, **meta["parts"]}
    meta["version"] = f"writers-{stamp}-s{seed}"
    (out / "writers.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return meta
