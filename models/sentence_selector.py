"""A light sentence selector trained on ROUGE-oracle labels, a length budget predicted from the document,
and the bullet compressor for earnings-call summaries.

    sel = SentenceSelector.load(directory, "finance")   # hashed n-grams + layout/figure features, logistic
    scores = sel.score(sentences)                      # P(sentence is in the oracle summary)
    budget = LengthBudget.load(directory).predict("finance", n_words)   # units: bullets (finance), words (articles)
    bullet = compress_bullet(sentence)                 # the clause(s) holding the figures, figures verbatim

Everything here is fitted by models/fit_writers.py from training pairs (ECTSum train for finance,
the PubMed sample's training split for medical articles) and stored as small .npz/.json files.
Pure: numpy only at run time; figures in a bullet are substrings of the source sentence (the
faithfulness check downstream drops any bullet whose figures the source does not hold).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_HASH = 1 << 15
_WORD = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*")
_FIGURE = re.compile(r"(?:[$€£]\s?)?\d+(?:[.,]\d+)*(?:\s?(?:%|percent|million|billion|thousand|bps|basis points|x))?",
                     re.IGNORECASE)
_MONEY = re.compile(r"[$€£]\s?\d|\d\s?(?:million|billion)\b", re.IGNORECASE)
_PCT = re.compile(r"\d\s?(?:%|percent)", re.IGNORECASE)
_KEYS = {
    "eps": re.compile(r"\b(?:per share|eps|earnings per)\b", re.I),
    "revenue": re.compile(r"\b(?:revenue|revenues|sales|net sales)\b", re.I),
    "guide": re.compile(r"\b(?:guidance|outlook|expect|expects|expected|sees|forecast|anticipate|full[- ]year|fiscal)\b", re.I),
    "income": re.compile(r"\b(?:net income|net loss|operating income|ebitda|margin|margins|cash flow)\b", re.I),
    "quarter": re.compile(r"\b(?:quarter|q[1-4]|first|second|third|fourth)\b", re.I),
    "we": re.compile(r"^(?:we|our)\b", re.I),
    "question": re.compile(r"\?\s*$"),
    "thanks": re.compile(r"\b(?:thank|thanks|good morning|good afternoon|operator|welcome)\b", re.I),
}
N_DENSE = 6 + len(_KEYS)


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _hash(tok: str) -> int:
    return zlib.crc32(tok.encode()) % N_HASH


def dense_features(sentences: list[str]) -> np.ndarray:
    n = len(sentences)
    out = np.zeros((n, N_DENSE), dtype=np.float32)
    for i, s in enumerate(sentences):
        toks = tokens(s)
        figs = len(_FIGURE.findall(s)) if any(c.isdigit() for c in s) else 0
        out[i, :6] = (i / max(1, n - 1), math.log1p(len(toks)) / 4, min(figs, 6) / 3, bool(_MONEY.search(s)),
                      bool(_PCT.search(s)), 1.0 if i < 3 else 0.0)
        out[i, 6:] = [bool(rx.search(s)) for rx in _KEYS.values()]
    return out


def sparse_rows(sentences: list[str]) -> list[np.ndarray]:
    """Hashed unigram + bigram ids per sentence (digits normalised to '0')."""
    rows = []
    for s in sentences:
        toks = [re.sub(r"\d", "0", t) for t in tokens(s)]
        grams = toks + [a + " " + b for a, b in zip(toks, toks[1:])]
        rows.append(np.unique(np.array([_hash(g) for g in grams], dtype=np.int64)) if grams else np.zeros(0, np.int64))
    return rows


def design_matrix(sentences: list[str]):
    """scipy CSR: [hashed n-grams (binary) | dense features]."""
    from scipy.sparse import csr_matrix, hstack

    rows = sparse_rows(sentences)
    indptr = np.cumsum([0] + [len(r) for r in rows])
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    sp = csr_matrix((np.ones(len(idx), np.float32), idx, indptr), shape=(len(sentences), N_HASH))
    return hstack([sp, csr_matrix(dense_features(sentences))], format="csr")


@dataclass
class SentenceSelector:
    weights: np.ndarray  # N_HASH + N_DENSE
    bias: float
    version: str = "selector"

    def score(self, sentences: list[str]) -> list[float]:
        if not sentences:
            return []
        rows = sparse_rows(sentences)
        dense = dense_features(sentences)
        w_sp, w_d = self.weights[:N_HASH], self.weights[N_HASH:]
        logits = np.array([w_sp[r].sum() for r in rows]) + dense @ w_d + self.bias
        return (1.0 / (1.0 + np.exp(-logits))).tolist()

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, weights=self.weights.astype(np.float16), bias=np.array([self.bias]),
                            version=np.array([self.version]))

    @classmethod
    def load(cls, directory: str | Path | None, domain: str) -> "SentenceSelector | None":
        if directory is None:
            return None
        path = Path(directory) / f"selector_{domain}.npz"
        if not path.is_file():
            return None
        z = np.load(path, allow_pickle=False)
        return cls(z["weights"].astype(np.float32), float(z["bias"][0]), str(z["version"][0]))


@dataclass
class LengthBudget:
    """Per kind: units = exp(a + b * log(document words)), clipped to [lo, hi]; units are bullets or words."""

    fits: dict[str, dict[str, float]]

    def predict(self, kind: str, doc_words: int) -> float | None:
        f = self.fits.get(kind)
        if not f:
            return None
        value = math.exp(f["a"] + f["b"] * math.log(max(1, doc_words)))
        return float(min(f["hi"], max(f["lo"], value)))

    @staticmethod
    def fit_kind(doc_words: list[int], units: list[float], unit: str) -> dict[str, float]:
        x = np.log(np.maximum(1, np.array(doc_words, dtype=np.float64)))
        y = np.log(np.maximum(1, np.array(units, dtype=np.float64)))
        b, a = (np.polyfit(x, y, 1) if len(set(x.tolist())) > 1 else (0.0, float(y.mean())))
        return {"a": float(a), "b": float(b), "lo": float(np.percentile(units, 5)), "hi": float(np.percentile(units, 95)),
                "unit": unit, "n": len(units), "median": float(np.median(units))}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.fits, indent=1, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path | None) -> "LengthBudget":
        path = Path(directory) / "length_budget.json" if directory is not None else None
        if path is None or not path.is_file():
            return cls({})
        return cls(json.loads(path.read_text()))


# --- bullets --------------------------------------------------------------------------------------

_LEAD = re.compile(
    r"^(?:(?:so|and|now|well|also|but|yes|okay|ok|again|finally|lastly|first|second|third|next|overall|additionally|"
    r"in addition|as a result|as you can see|as i mentioned|as mentioned|as expected|as noted|importantly|specifically|"
    r"turning to|moving to|looking at|with respect to|in terms of|for the quarter|for the full year|on a gaap basis|"
    r"on an adjusted basis|in the quarter|this quarter|today)\b[,]?\s*)+", re.IGNORECASE)
_HEDGE = re.compile(r"^(?:i(?:'m| am) (?:very |really )?(?:pleased|happy|proud|excited) to (?:report|share|say|announce) that\s+|"
                    r"i(?:'d| would) (?:like to )?(?:note|point out|highlight|mention) that\s+|"
                    r"(?:we are|we're) (?:very )?(?:pleased|happy|proud) to (?:report|share|announce) that\s+|"
                    r"as (?:you|we) (?:can )?see(?: on slide \d+)?,?\s+|(?:it's|it is) worth noting that\s+)", re.IGNORECASE)
# A dash break starts only where a blank run starts (the look-behind): `\s+-` tried at every blank of a
# long run and failing at its end was quadratic (20,000 blanks: 0.7 s). Same matches otherwise (finditer
# takes the leftmost start, which is the run's start).
_BREAK = re.compile(r",\s+(?:which|and|while|but|as|driven|reflecting|primarily|mainly|due|compared|representing|"
                    r"an increase|a decrease|up|down)\b|;\s+|(?<!\s)\s+[-—]\s+")


def compress_bullet(sentence: str, max_words: int = 22) -> str:
    """A contiguous piece of the sentence: lead-ins dropped, clauses after the last figure dropped (and
    after the first figure-bearing clause when that is already `max_words` long). Never rewrites a figure;
    the result is a substring of `sentence` (plus a full stop)."""
    s = sentence.strip()
    s = _LEAD.sub("", s)
    s = _HEDGE.sub("", s)
    if not s:
        return sentence.strip()
    cuts = [0] + [m.start() for m in _BREAK.finditer(s)] + [len(s)]
    parts = [s[a:b] for a, b in zip(cuts, cuts[1:])]
    figs = [i for i, p in enumerate(parts) if re.search(r"\d", p)]
    if figs:
        end = figs[-1]
        words = 0
        for i, p in enumerate(parts[: end + 1]):
            words += len(p.split())
            if i in figs and words >= max_words:
                end = i
                break
        out = "".join(parts[: end + 1])
    else:
        out = parts[0]
    out = out.strip().rstrip(",;:- ")
    if not out:
        return sentence.strip()
    return out if out.endswith((".", "!", "?")) else out + "."


def budget_select(sentences: list[str], scores: list[float], word_budget: int, max_chars: int,
                  max_overlap: float = 0.5) -> list[int]:
    """Highest-scoring sentences, skipping near-duplicates (word Jaccard > max_overlap), until the word
    budget is reached (the last sentence may cross it by less than half its length) or max_chars would be
    exceeded; returned in document order."""
    toks = [set(tokens(s)) for s in sentences]
    order = sorted(range(len(sentences)), key=lambda i: -scores[i])
    chosen: list[int] = []
    used_words = used_chars = 0
    for i in order:
        if used_words >= word_budget:
            break
        n = len(sentences[i].split())
        if n < 3 and len(sentences) > 3:
            continue
        if any(len(toks[i] & toks[j]) / max(1, len(toks[i] | toks[j])) > max_overlap for j in chosen):
            continue
        if used_chars + len(sentences[i]) > max_chars or (used_words + n - word_budget) > n / 2 and chosen:
            continue
        chosen.append(i)
        used_words += n
        used_chars += len(sentences[i]) + 1
    return sorted(chosen) or order[:1]


_STOP = frozenset("a an the and or but of to in on for with at by from as is are was were be been it its this that these "
                  "those we our they their which who than then there also not no into over more most".split())


def textrank_similarity(bags: list[set[str]]) -> np.ndarray:
    """TextRank's sentence similarity (Mihalcea & Tarau): shared content words over the sum of the log
    lengths; one matrix for this selector's centrality and the TextRank baseline (pipelines/baselines)."""
    n = len(bags)
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            common = len(bags[i] & bags[j])
            if common and len(bags[i]) > 1 and len(bags[j]) > 1:
                sim[i, j] = sim[j, i] = common / (math.log(len(bags[i])) + math.log(len(bags[j])))
    return sim


def centrality(sentences: list[str], damping: float = 0.85, iters: int = 60) -> np.ndarray:
    """TextRank (Mihalcea & Tarau similarity: shared content words over log lengths), power iteration."""
    bags = [set(t for t in tokens(s) if t not in _STOP) for s in sentences]
    n = len(bags)
    if n == 0:
        return np.zeros(0)
    sim = textrank_similarity(bags)
    out = sim.sum(1)
    trans = np.where(out[:, None] > 0, sim / np.maximum(out[:, None], 1e-12), 1.0 / n)
    rank = np.full(n, 1.0 / n)
    for _ in range(iters):
        rank = (1 - damping) / n + damping * trans.T @ rank
    return rank


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std() if len(x) > 1 and x.std() > 0 else np.zeros_like(x, dtype=float)


@dataclass
class CentralityLead:
    """Long articles: z(TextRank centrality) + lead_weight * z(earliness); lead_weight fitted on training pairs."""

    lead_weight: float
    version: str = "centrality-lead"

    def score(self, sentences: list[str]) -> list[float]:
        if not sentences:
            return []
        early = -np.arange(len(sentences), dtype=float)
        return (_z(centrality(sentences)) + self.lead_weight * _z(early)).tolist()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "centrality-lead", "lead_weight": self.lead_weight,
                                          "version": self.version}))

    @classmethod
    def load(cls, directory: str | Path | None, domain: str) -> "CentralityLead | None":
        path = Path(directory) / f"selector_{domain}.json" if directory is not None else None
        if path is None or not path.is_file():
            return None
        d = json.loads(path.read_text())
        return cls(float(d["lead_weight"]), str(d.get("version", "centrality-lead")))
