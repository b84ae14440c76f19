"""Rule-based key facts with source spans, read straight off the report text.

finance: figures with units (currency, %, basis points, scale words) and the period they refer to
(`Q1`, `first quarter`, `fiscal 2021`, `full year`, `year-over-year`), guidance sentences, and risk
factors (the `Item 1A` / `Risk Factors` section when there is one, else sentences with risk cues).
medical: findings (the FINDINGS section, or every sentence of a findings-only report) and the
impression (the IMPRESSION / CONCLUSION section; its first MAX_IMPRESSION sentences). Every span indexes
the original text.

Linear time in the text: sentences and sections are linear (see their modules), figures are read lazily
and reading stops at the caps (`MAX_FIGURES`, ...), the patterns below start at word boundaries and have
no nested quantifiers.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator
from itertools import islice
from operator import attrgetter

from pipelines.contracts import KeyFact, Span
from pipelines.faithfulness import _KEY_FIGURE, Figure, _parse, iter_figures
from pipelines.sections import find_section, split_sections
from pipelines.sentences import Sentence, first_sentences, split_sentences

_PERIOD = re.compile(
    r"\b(?:q[1-4](?:\s+(?:fy)?\s?\d{2,4})?|(?:first|second|third|fourth)[- ]quarter|fiscal(?:\s+year)?\s+\d{2,4}"
    r"|fy\s?\d{2,4}|full[- ]year(?:\s+\d{4})?|year[- ]over[- ]year|sequential(?:ly)?|(?:19|20)\d{2})\b",
    re.IGNORECASE,
)
# The lookaheads (the first letters of the alternatives) let the scan skip most positions at once: these
# run over the whole text (`_matching`): 1.5-6x faster so.
_GUIDANCE = re.compile(r"(?=[egoafptr])\b(?:expect\w*|guidance|outlook|anticipat\w*|forecast\w*|project(?:s|ed|ing)|target\w*|reaffirm\w*|rais\w+ (?:our|the) (?:guidance|outlook))\b", re.IGNORECASE)
_RISK = re.compile(r"(?=[ruhavilspc])\b(?:risks?|uncertaint\w*|headwinds?|adverse\w*|volatil\w*|impairment|litigation|inflation\w*|supply chain|shortage\w*|pandemic|covid)\b", re.IGNORECASE)

_START = attrgetter("start")
_DIGIT = re.compile(r"\d")  # what _KEY_FIGURE's number needs (\d, as there)
_BLANKS = re.compile(r"\s*")

MAX_FIGURES, MAX_GUIDANCE, MAX_RISKS, MAX_FINDINGS, MAX_IMPRESSION = 12, 5, 5, 10, 10


def _span(s: Sentence) -> Span:
    return Span(start=s.start, end=s.end)


def finance_facts(text: str, sentences: list[Sentence] | None = None) -> list[KeyFact]:
    """`sentences`: `split_sentences(text)` when the caller has it (spans into `text`, in order); without
    it only the lines that hold a match are split."""
    located = _Sentences(text, sentences)
    facts: list[KeyFact] = []
    read: Sentence | None = None
    period: re.Match | None = None
    for s, f in islice(_key_figures(text, located), MAX_FIGURES):
        if s is not read:  # searched once per sentence with a key figure
            read, period = s, _PERIOD.search(s.text)
        spans = [Span(start=s.start + f.start, end=s.start + f.end)]
        label = f.text
        if period:
            spans.append(Span(start=s.start + period.start(), end=s.start + period.end()))
            label = f"{f.text} ({period.group(0)})"
        facts.append(KeyFact(kind="figure", text=label, spans=spans))
    guidance = _matching(_GUIDANCE, text, located)
    facts += [KeyFact(kind="guidance", text=s.text, spans=[_span(s)]) for s in islice(guidance, MAX_GUIDANCE)]
    risk_section = find_section(split_sections(text), "item 1a", "risk factors", "risks")
    risks = (first_sentences(text[risk_section.body:risk_section.end], MAX_RISKS, risk_section.body)
             if risk_section else _matching(_RISK, text, located))
    facts += [KeyFact(kind="risk_factor", text=s.text, spans=[_span(s)]) for s in islice(risks, MAX_RISKS)]
    return facts


def _containing(sentences: list[Sentence], pos: int) -> Sentence | None:
    i = bisect_right(sentences, pos, key=_START) - 1
    return sentences[i] if i >= 0 and pos < sentences[i].end else None


class _Sentences:
    """The sentences of `text` by position: the caller's `split_sentences(text)`, or, without it, those
    of the one line asked about, split on its own. A sentence never spans a line break, and a line splits
    alone as in the whole text given the blanks after it and two characters more (all that the boundary
    at its end reads). Finance facts of a million one-word lines split none of them."""

    def __init__(self, text: str, sentences: list[Sentence] | None):
        self.text, self.listed = text, sentences
        self._lo = self._hi = 0
        self._line: list[Sentence] = []

    def at(self, pos: int) -> Sentence | None:
        if self.listed is not None:
            return _containing(self.listed, pos)
        if not self._lo <= pos < self._hi:
            t = self.text
            lo, hi = t.rfind("\n", 0, pos) + 1, t.find("\n", pos)
            hi = len(t) if hi < 0 else hi
            context = _BLANKS.match(t, hi).end() + 2
            self._line = [s for s in split_sentences(t[lo:context], lo) if s.start < hi]
            self._lo, self._hi = lo, hi + 1
        return _containing(self._line, pos)

    def all(self) -> list[Sentence]:
        if self.listed is None:
            self.listed = split_sentences(self.text)
        return self.listed


def _matching(rx: re.Pattern, text: str, sentences: _Sentences) -> Iterator[Sentence]:
    """`(s for s in sentences if rx.search(s.text))`, by one scan of the whole text: a match never spans
    two sentences (these patterns hold no stop or line break) and reads the same at a sentence's edges
    (the characters around a sentence are blanks or stops). A million one-word sentences cost a search
    each before."""
    pos = 0
    while m := rx.search(text, pos):
        s = sentences.at(m.start())
        if s is None:  # outside the sentences (not with split_sentences' own)
            pos = m.start() + 1
            continue
        if m.end() <= s.end or rx.search(s.text):  # (the search: a list whose sentence is cut short)
            yield s
        pos = s.end


def _key_figures(text: str, located: _Sentences) -> Iterator[tuple[Sentence, Figure]]:
    """`((s, f) for s in sentences for f in iter_figures(s.text, key_only=True))`, by one scan of the
    whole text for key figures: a text of bare numbers or of numbered headings ('ITEM 1.') costs no
    Python step per number or sentence. A match that is not within one sentence (a unit or currency
    sign across a line break) has the sentences it touches read one by one, as before."""
    pos = 0
    while True:
        # A match holds a digit at most 4 characters after its start ('-$ .5'): the search starts near
        # the next digit, found by the engine's fast scan (a text without digits is not read for figures).
        digit = _DIGIT.search(text, pos)
        if digit is None or (m := _KEY_FIGURE.search(text, max(pos, digit.start() - 4))) is None:
            return
        s = located.at(m.start())
        if s is not None and m.end() <= s.end:
            f = _figure(m, text, s.start)
            if f is not None:
                yield s, f
            pos = m.end()
            continue
        # Across a sentence edge: read each sentence the match touches on its own.
        sentences = located.all()
        i = bisect_right(sentences, m.start(), key=_START) - 1
        i = max(i, 0)
        while i < len(sentences) and sentences[i].start < m.end():
            t = sentences[i]
            if t.end > pos:
                for f in iter_figures(t.text, key_only=True):
                    if t.start + f.start >= pos:
                        yield t, f
            pos = max(pos, t.end)
            i += 1
        pos = max(pos, m.start() + 1)


def _figure(m: re.Match, text: str, base: int) -> Figure | None:
    """The `Figure` of a key match in `text`, its offsets relative to `base` (its sentence's start)."""
    parsed = _parse(m, text)
    if parsed is None:
        return None
    mantissa, scale, decimals, kind, end = parsed
    return Figure(text[m.start():end].strip(), mantissa * scale, mantissa, scale, decimals, kind,
                  m.start() - base, end - base)


def medical_facts(text: str) -> list[KeyFact]:
    sections = split_sections(text)
    findings = find_section(sections, "findings")
    impression = find_section(sections, "impression", "conclusion")
    # Only the first MAX_FINDINGS sentences are facts: only they are split (a text of a million lines
    # built a million sentences for ten).
    if findings is not None:
        finding_sents = first_sentences(text[findings.body:findings.end], MAX_FINDINGS, findings.body)
    elif impression is None:
        finding_sents = first_sentences(text, MAX_FINDINGS)
    else:
        finding_sents = [s for s in first_sentences(text, MAX_FINDINGS) if s.end <= impression.start]
    facts = [KeyFact(kind="finding", text=s.text, spans=[_span(s)]) for s in finding_sents]
    if impression is not None:
        # An impression is a few lines; its first MAX_IMPRESSION sentences are facts (all of them, before:
        # a million-line impression made a million facts).
        body = text[impression.body:impression.end]
        facts += [KeyFact(kind="impression", text=s.text, spans=[_span(s)])
                  for s in first_sentences(body, MAX_IMPRESSION, impression.body)]
    return facts


def key_facts(text: str, domain: str, sentences: list[Sentence] | None = None) -> list[KeyFact]:
    return medical_facts(text) if str(domain) == "medical" else finance_facts(text, sentences)
