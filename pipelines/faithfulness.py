"""Faithfulness checks for summaries: every figure in a summary must be found in the source.

Figures are normalised before comparison, so `1,234.5`, `1234.5`, `$1.2 billion` (matches 1,234
million when rounded to the precision written), `12%` / `12 percent`, `$3.4M` and `3.4 million` meet.
Numbers glued to letters (`Q1`, `3D`, `COVID-19`) are identifiers, not figures, and are not checked.
A summary sentence holding a figure the source does not support is dropped and counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SCALES = {
    "thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "mm": 1e6, "m": 1e6, "billion": 1e9, "bn": 1e9,
    "b": 1e9, "trillion": 1e12, "tn": 1e12, "t": 1e12,
}
_FIGURE = re.compile(
    r"""(?<![\w.])(?P<neg>[-−])?(?P<cur>[$€£¥])?\s?
        (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
        (?:\s?(?P<pct>%|percent\b|per\s?cent\b|basis\s+points?\b|bps\b)
          |\s?(?P<scale>thousand|million|billion|trillion|mn|bn|tn|mm|[kmbt])\b)?
        (?![\w])""",
    re.VERBOSE | re.IGNORECASE,
)


@dataclass(frozen=True)
class Figure:
    text: str
    value: float  # absolute value, scale applied (1.2 billion -> 1.2e9; 12% -> 12)
    mantissa: float  # the number as written (1.2)
    scale: float  # 1e9
    decimals: int  # digits after the point as written
    kind: str  # number | percent | bps
    start: int
    end: int


def extract_figures(text: str) -> list[Figure]:
    out: list[Figure] = []
    for m in _FIGURE.finditer(text):
        before = text[max(0, m.start() - 2) : m.start()]
        if len(before) == 2 and before[1] in "-−/" and before[0].isalnum():
            continue  # 'COVID-19', '10-K', '24/7': part of a name, not a figure
        raw = m.group("num").replace(",", "")
        try:
            mantissa = float(raw)
        except ValueError:
            continue
        decimals = len(raw.split(".")[1]) if "." in raw else 0
        scale_word = (m.group("scale") or "").lower()
        # A bare single letter scale is only a scale after a currency sign ($3.4M), else it's a word.
        if scale_word in ("k", "m", "b", "t") and not m.group("cur"):
            scale_word = ""
        scale = _SCALES.get(scale_word, 1.0)
        pct = (m.group("pct") or "").lower()
        kind = "bps" if pct.startswith(("basis", "bps")) else "percent" if pct else "number"
        end = m.end() if (scale_word or pct) else m.end("num")
        out.append(Figure(text[m.start():end].strip(), mantissa * scale, mantissa, scale, decimals, kind, m.start(), end))
    return out


def _supported(fig: Figure, source_figs: list[Figure]) -> bool:
    for s in source_figs:
        if fig.kind != s.kind and "number" not in (fig.kind, s.kind):
            continue
        if math.isclose(fig.value, s.value, rel_tol=1e-9, abs_tol=1e-9):
            return True
        # Rounded restatement: '$1.2 billion' for '$1,234 million' (rounded to the digits written).
        if fig.scale > 1 and s.value > 0:
            if round(s.value / fig.scale, fig.decimals) == round(fig.mantissa, fig.decimals):
                return True
    return False


@dataclass
class FaithfulnessResult:
    kept: list[int]  # indexes of summary sentences kept
    dropped: list[int]
    figures_checked: int
    figures_supported: int
    unsupported: list[str]

    def report(self, **extra) -> dict:
        return {
            "figures_checked": self.figures_checked,
            "figures_supported": self.figures_supported,
            "unsupported_dropped": len(self.dropped),
            "unsupported_figures": self.unsupported[:20],
            **extra,
        }


def check_sentences(sentences: list[str], source: str) -> FaithfulnessResult:
    """Which summary sentences survive: a sentence with any figure the source lacks is dropped."""
    source_figs = extract_figures(source)
    kept, dropped, unsupported = [], [], []
    checked = supported = 0
    for i, sent in enumerate(sentences):
        ok = True
        for fig in extract_figures(sent):
            checked += 1
            if _supported(fig, source_figs):
                supported += 1
            else:
                ok = False
                unsupported.append(fig.text)
        (kept if ok else dropped).append(i)
    return FaithfulnessResult(kept, dropped, checked, supported, unsupported)


def figure_support_rate(summary: str, source: str) -> tuple[int, int]:
    """(figures in `summary` found in `source`, figures in `summary`) - the eval metric."""
    res = check_sentences([summary], source)
    return res.figures_supported, res.figures_checked


class UnfaithfulSummaryError(AssertionError):
    """An extractive summary that is not made of source text (a bug, never user input)."""


def assert_source_only(sentences: list[tuple[str, int, int]], source: str) -> None:
    """Each (text, start, end) must be exactly source[start:end]; medical extractive summaries rely on it."""
    for text, start, end in sentences:
        if source[start:end] != text:
            raise UnfaithfulSummaryError(f"summary sentence is not source text at [{start}, {end}): {text[:60]!r}")
