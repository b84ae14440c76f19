"""Faithfulness checks for summaries: every figure in a summary must be found in the source.

Figures are normalised before comparison, so `1,234.5`, `1234.5`, `$1.2 billion` (matches 1,234
million when rounded to the precision written), `12%` / `12 percent`, `$3.4M` and `3.4 million` meet.
Numbers glued to letters (`Q1`, `3D`, `COVID-19`) are identifiers, not figures, and are not checked.
A summary sentence holding a figure the source does not support is dropped and counted.

Worst-case time is linear in the source plus the summary (times a log): the figure pattern is
anchored by a look-behind so digit runs are read once; the source's figures are indexed once per check
(distinct values per kind, sorted) and each summary figure is looked up by bisection, not compared
with every source figure (a 2 MB source of '1% ' holds 700,000 figures).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

_SCALES = {
    "thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "mm": 1e6, "m": 1e6, "billion": 1e9, "bn": 1e9,
    "b": 1e9, "trillion": 1e12, "tn": 1e12, "t": 1e12,
}
_FIGURE_PATTERN = r"""(?<![\w.])(?P<neg>[-−])?(?P<cur>[$€£¥])?\s?
        (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
        (?:\s?(?P<pct>%|percent\b|per\s?cent\b|basis\s+points?\b|bps\b)
          |\s?(?P<scale>thousand|million|billion|trillion|mn|bn|tn|mm|[kmbt])\b)?
        (?![\w])"""
_FIGURE = re.compile(_FIGURE_PATTERN, re.VERBOSE | re.IGNORECASE)
# The key figures only (`iter_figures(key_only=True)`: a currency sign, a percent/bps unit or a scale
# word), so that a run of bare numbers ('1,1,1,...') is skipped by the regex engine, not one Python step
# per number. Same pattern, tried in the same order, less the choices that make a figure bare: a letter
# scale only after a currency sign, and no unit at all only after one. Its matches are exactly the key
# matches of `_FIGURE` (a bare match of `_FIGURE` leaves no key match inside it: the choices it skipped
# end at ',', '.' or a digit, where no unit starts).
# Without a currency sign, a unit must follow the number (the lookahead: its first letters), which
# turns a bare number away at once (2x faster on '-1 -1 ...').
_KEY_FIGURE = re.compile(
    _FIGURE_PATTERN.replace("|[kmbt])\\b)?", "|(?(cur)[kmbt]|(?!)))\\b)?(?(cur)|(?(pct)|(?(scale)|(?!))))")
    .replace("|\\.\\d+)\n", "|\\.\\d+)(?(cur)|(?=\\s?[%pbtm]))\n"),
    re.VERBOSE | re.IGNORECASE,
)
assert _KEY_FIGURE.pattern != _FIGURE_PATTERN
# `_FIGURE` with a first group holding the two characters before the match when they make it part of a
# name ('COVID-19', '10-K', '24/7': what `_parse` turns away); the matches are the same.
_SOURCE_FIGURE = re.compile(r"(?:(?<=(?P<name>[^\W_][-−/]))|)" + _FIGURE_PATTERN, re.VERBOSE | re.IGNORECASE)
_NAME_DASH = re.compile(r"[^\W_][-−/]")


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


_LETTER_SCALES = ("k", "m", "b", "t")  # a scale only after a currency sign


def _parse(m: re.Match, text: str) -> tuple[float, float, int, str, int] | None:
    """(mantissa, scale, decimals, kind, end) of one `_FIGURE` match, or None when it is not a figure."""
    start = m.start()
    if start >= 2 and text[start - 1] in "-−/" and text[start - 2].isalnum():
        return None  # 'COVID-19', '10-K', '24/7': part of a name, not a figure
    parsed = _parse_groups(m.group("cur"), m.group("num"), m.group("pct"), m.group("scale"))
    if parsed is None:
        return None
    mantissa, scale, decimals, kind, unit = parsed
    return mantissa, scale, decimals, kind, m.end() if unit else m.end("num")


def _parse_groups(cur: str | None, num: str, pct: str | None, scale_word: str | None
                  ) -> tuple[float, float, int, str, bool] | None:
    """(mantissa, scale, decimals, kind, whether a unit is part of it) from a `_FIGURE` match's groups."""
    raw = num.replace(",", "")
    try:
        mantissa = float(raw)
    except ValueError:
        return None
    decimals = len(raw.split(".")[1]) if "." in raw else 0
    scale_word = (scale_word or "").lower()
    # A bare single letter scale is only a scale after a currency sign ($3.4M), else it's a word.
    if scale_word in ("k", "m", "b", "t") and not cur:
        scale_word = ""
    scale = _SCALES.get(scale_word, 1.0)
    pct = (pct or "").lower()
    kind = "bps" if pct.startswith(("basis", "bps")) else "percent" if pct else "number"
    return mantissa, scale, decimals, kind, bool(scale_word or pct)


def iter_figures(text: str, key_only: bool = False) -> Iterator[Figure]:
    """The figures of `text` in order, one at a time (a caller that needs a few stops early).
    `key_only`: only figures with a unit (percent, bps, a scale word) or a currency sign, i.e. without
    the bare numbers (counts, years), which the pattern then skips (`_KEY_FIGURE`)."""
    for m in (_KEY_FIGURE if key_only else _FIGURE).finditer(text):
        parsed = _parse(m, text)
        if parsed is None:
            continue
        mantissa, scale, decimals, kind, end = parsed
        yield Figure(text[m.start():end].strip(), mantissa * scale, mantissa, scale, decimals, kind, m.start(), end)


def extract_figures(text: str) -> list[Figure]:
    return list(iter_figures(text))


class SourceFigures:
    """The figures of a source, indexed for `supports`: distinct values per kind, sorted.

    `supports(fig)` is exactly `any(<fig is supported by s> for s in extract_figures(source))` (see
    `_supported`), in O(log n): both tests select a contiguous range of sorted values (isclose around the
    value; `round(v / scale, decimals)` is monotone in v), so the neighbours found by bisection decide.
    """

    def __init__(self, source: str):
        values: dict[str, set[float]] = {"number": set(), "percent": set(), "bps": set()}
        # The distinct (name context, sign, currency, number, unit) of the matches, collected by C-level
        # iteration (`_SOURCE_FIGURE` is `_FIGURE` that also captures the 'COVID-' before a match), each
        # parsed once: a 2 MB source of '1,' holds a million figures, and one Python step each cost
        # 1.1 s/MB.
        if _NAME_DASH.search(source) is None:  # no 'COVID-19' shape anywhere: the plain pattern (15% faster)
            found = (("", *g) for g in set(map(re.Match.groups, _FIGURE.finditer(source))))
        else:
            found = set(map(re.Match.groups, _SOURCE_FIGURE.finditer(source)))
        for name, _neg, cur, num, pct, scale_word in found:
            parsed = None if name else _parse_groups(cur, num, pct, scale_word)
            if parsed is not None:
                mantissa, scale, _, kind, _ = parsed
                values[kind].add(mantissa * scale)
        self._sorted = {k: sorted(v) for k, v in values.items()}

    def supports(self, fig: Figure) -> bool:
        kinds = self._sorted if fig.kind == "number" else (fig.kind, "number")
        return any(self._in(self._sorted[k], fig) for k in kinds)

    @staticmethod
    def _in(values: list[float], fig: Figure) -> bool:
        if not values:
            return False
        i = bisect_left(values, fig.value)
        for j in (i - 1, i):
            if 0 <= j < len(values) and math.isclose(fig.value, values[j], rel_tol=1e-9, abs_tol=1e-9):
                return True
        # Rounded restatement: '$1.2 billion' for '$1,234 million' (rounded to the digits written).
        if fig.scale > 1:
            target = round(fig.mantissa, fig.decimals)
            lo = bisect_right(values, 0.0)  # s.value > 0
            k = bisect_left(values, target, lo=lo, key=lambda v: round(v / fig.scale, fig.decimals))
            if k < len(values) and round(values[k] / fig.scale, fig.decimals) == target:
                return True
        return False


def _supported(fig: Figure, source_figs: list[Figure]) -> bool:
    """The reference definition (`SourceFigures.supports` computes the same over an index)."""
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
    index: SourceFigures | None = None  # built on the first figure: a summary without figures costs nothing
    kept, dropped, unsupported = [], [], []
    checked = supported = 0
    for i, sent in enumerate(sentences):
        ok = True
        for fig in extract_figures(sent):
            checked += 1
            if index is None:
                index = SourceFigures(source)
            if index.supports(fig):
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
