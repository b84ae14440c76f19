"""Earnings-call sentences rewritten as analyst bullets ("q3 adjusted earnings per share $1.24."),
figures copied verbatim from the sentence.

    ctx = call_context(document_sentences)       # the quarter ("q3") and fiscal year the call reports
    bullet = analyst_bullet(sentence, ctx)        # a template bullet, else compress_bullet(sentence)

Templates (the shapes most ECTSum reference bullets take): per-share earnings ("q{n} [adjusted|gaap|
non-gaap] earnings per share $X."), revenue/sales ("q{n} revenue rose 7.5% to $1.5 billion."), and
guidance ("sees fy [2022] adjusted earnings per share $2.85 to $3.10.", "sees fy revenue ...").
Every figure in a bullet is a substring of its sentence; the year appears only when the sentence
states it. A sentence no template fits is compressed (models/sentence_selector.compress_bullet).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass

from models.sentence_selector import compress_bullet

_ORD = {"first": 1, "second": 2, "third": 3, "fourth": 4, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4}
_QUARTER = re.compile(r"\b(?:(first|second|third|fourth|1st|2nd|3rd|4th)[- ]quarter|q([1-4]))\b", re.IGNORECASE)
_MONEY = r"(?:\(?-?[$€£]\s?\d[\d,]*(?:\.\d+)?\)?(?:\s?(?:million|billion|thousand|mln|bln|[mbk])\b)?)"
_RANGE = re.compile(_MONEY + r"(?:\s*(?:to|and|-|–)\s*" + _MONEY + r")?", re.IGNORECASE)
_AMOUNT = re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?\s?(?:million|billion|mln|bln)\b(?:\s*(?:to|and|-)\s*[$€£]?\s?\d[\d,]*"
                     r"(?:\.\d+)?\s?(?:million|billion|mln|bln)?\b)?", re.IGNORECASE)
_PCT = re.compile(r"\d+(?:\.\d+)?\s?(?:%|percent)", re.IGNORECASE)
_PER_SHARE = re.compile(r"per (?:diluted |basic |fully diluted )?share|\beps\b|earnings per", re.IGNORECASE)
_QUAL = re.compile(r"\b(adjusted|non-gaap|gaap|core|operating|diluted|ongoing|normalized|reported)\b", re.IGNORECASE)
_LOSS = re.compile(r"\b(?:loss|losses) per\b|\bnet loss\b", re.IGNORECASE)
_GUIDE = re.compile(r"\b(?:guidance|outlook|expect|expects|expecting|anticipate|forecast|forecasting|guiding|"
                    r"project|projecting|targeting|sees|range of|raising|raised|reaffirm|reaffirming|reiterat\w*)\b",
                    re.IGNORECASE)
_YEAR = re.compile(r"\b(?:fiscal |full[- ]year |fy\s?)?(20[1-3]\d)\b", re.IGNORECASE)
_REVENUE = re.compile(r"\b(net sales|revenues?|sales|net revenues?|total revenues?)\b", re.IGNORECASE)
_UP = re.compile(r"\b(?:increase[sd]?|grew|grow|growth|up|rose|higher|improv\w+)\b", re.IGNORECASE)
_DOWN = re.compile(r"\b(?:decrease[sd]?|declined?|down|fell|lower|decline)\b", re.IGNORECASE)


@dataclass(frozen=True)
class CallContext:
    quarter: str  # "q3", or "qtrly" when the call does not say
    year: str | None


def call_context(sentences: list[str]) -> CallContext:
    counts: Counter = Counter()
    head = sentences[: max(10, len(sentences) // 3)]
    for s in head:
        for m in _QUARTER.finditer(s):
            n = _ORD[m.group(1).lower()] if m.group(1) else int(m.group(2))
            counts[n] += 1
    years: Counter = Counter(m.group(1) for s in head for m in _YEAR.finditer(s))
    q = f"q{counts.most_common(1)[0][0]}" if counts else "qtrly"
    return CallContext(q, years.most_common(1)[0][0] if years else None)


def _eps_figure(sentence: str) -> str | None:
    """The money figure (or range) nearest a per-share phrase."""
    anchors = [m.start() for m in _PER_SHARE.finditer(sentence)]
    figs = [m for m in _RANGE.finditer(sentence) if "$" in m.group(0) or "€" in m.group(0) or "£" in m.group(0)]
    figs = [m for m in figs if not re.search(r"million|billion|mln|bln|\b[mb]\b", m.group(0), re.IGNORECASE)]
    if not anchors or not figs:
        return None
    # the nearest anchor of each figure by bisection (all figures x all anchors was quadratic: a text
    # of "per share $1 " repeated made both lists long)
    def distance(m) -> int:
        k = bisect.bisect_left(anchors, m.start())
        return min(abs(m.start() - anchors[j]) for j in (k - 1, k) if 0 <= j < len(anchors))

    best = min(figs, key=distance)
    return best.group(0).strip()


def _qualifier(sentence: str, before: int) -> str:
    quals = [m.group(1).lower() for m in _QUAL.finditer(sentence[: max(before, 0)] or sentence)]
    for q in ("non-gaap", "adjusted", "gaap", "core", "ongoing", "operating", "normalized"):
        if q in quals:
            return q + " "
    return ""


def _year_in(sentence: str) -> str | None:
    m = _YEAR.search(sentence)
    return m.group(1) if m else None


def analyst_bullet(sentence: str, ctx: CallContext) -> str:
    s = sentence.strip()
    guide = bool(_GUIDE.search(s))
    eps = _eps_figure(s) if _PER_SHARE.search(s) else None
    if eps:
        qual = _qualifier(s, s.find(eps))
        kind = "loss per share" if _LOSS.search(s) else "earnings per share"
        if guide:
            year = _year_in(s)
            return f"sees fy {year + ' ' if year else ''}{qual}{kind} {eps}."
        return f"{ctx.quarter} {qual}{kind} {eps}."
    rev = _REVENUE.search(s)
    amount = _AMOUNT.search(s)
    if rev and amount and amount.start() > rev.start():
        word = "sales" if "sales" in rev.group(1).lower() else "revenue"
        if guide:
            year = _year_in(s)
            return f"sees fy {year + ' ' if year else ''}{word} {amount.group(0).strip()}."
        pct = _PCT.search(s)
        between = s[rev.end(): pct.start()] if pct else ""
        if pct and (_UP.search(between) or _DOWN.search(between)):
            verb = "rose" if _UP.search(between) and not _DOWN.search(between) else "fell"
            return f"{ctx.quarter} {word} {verb} {pct.group(0)} to {amount.group(0).strip()}."
        return f"{ctx.quarter} {word} {amount.group(0).strip()}."
    return compress_bullet(s)
