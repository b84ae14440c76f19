"""Rule-based key facts with source spans, read straight off the report text.

finance: figures with units (currency, %, basis points, scale words) and the period they refer to
(`Q1`, `first quarter`, `fiscal 2021`, `full year`, `year-over-year`), guidance sentences, and risk
factors (the `Item 1A` / `Risk Factors` section when there is one, else sentences with risk cues).
medical: findings (the FINDINGS section, or every sentence of a findings-only report) and the
impression (the IMPRESSION / CONCLUSION section). Every span indexes the original text.

Linear time in the text: sentences and sections are linear (see their modules), figures are read lazily
and reading stops at the caps (`MAX_FIGURES`, ...), the patterns below start at word boundaries and have
no nested quantifiers.
"""

from __future__ import annotations

import re
from itertools import islice

from pipelines.contracts import KeyFact, Span
from pipelines.faithfulness import iter_figures
from pipelines.sections import find_section, split_sections
from pipelines.sentences import Sentence, split_sentences

_PERIOD = re.compile(
    r"\b(?:q[1-4](?:\s+(?:fy)?\s?\d{2,4})?|(?:first|second|third|fourth)[- ]quarter|fiscal(?:\s+year)?\s+\d{2,4}"
    r"|fy\s?\d{2,4}|full[- ]year(?:\s+\d{4})?|year[- ]over[- ]year|sequential(?:ly)?|(?:19|20)\d{2})\b",
    re.IGNORECASE,
)
_GUIDANCE = re.compile(r"\b(?:expect\w*|guidance|outlook|anticipat\w*|forecast\w*|project(?:s|ed|ing)|target\w*|reaffirm\w*|rais\w+ (?:our|the) (?:guidance|outlook))\b", re.IGNORECASE)
_RISK = re.compile(r"\b(?:risks?|uncertaint\w*|headwinds?|adverse\w*|volatil\w*|impairment|litigation|inflation\w*|supply chain|shortage\w*|pandemic|covid)\b", re.IGNORECASE)

_DIGIT = re.compile(r"\d")  # what _FIGURE's number needs (\d, as there)

MAX_FIGURES, MAX_GUIDANCE, MAX_RISKS, MAX_FINDINGS = 12, 5, 5, 10


def _span(s: Sentence) -> Span:
    return Span(start=s.start, end=s.end)


def finance_facts(text: str, sentences: list[Sentence] | None = None) -> list[KeyFact]:
    sentences = sentences if sentences is not None else split_sentences(text)
    facts: list[KeyFact] = []
    n_fig = 0
    for s in sentences:
        if n_fig >= MAX_FIGURES:
            break
        if not _DIGIT.search(s.text):
            continue  # no figure without a digit
        period: re.Match | None | bool = False  # searched on the sentence's first key figure
        for f in iter_figures(s.text, key_only=True):  # a bare number (a count, a year) is not a key figure
            if period is False:
                period = _PERIOD.search(s.text)
            spans = [Span(start=s.start + f.start, end=s.start + f.end)]
            label = f.text
            if period:
                spans.append(Span(start=s.start + period.start(), end=s.start + period.end()))
                label = f"{f.text} ({period.group(0)})"
            facts.append(KeyFact(kind="figure", text=label, spans=spans))
            n_fig += 1
            if n_fig >= MAX_FIGURES:
                break
    guidance = islice((s for s in sentences if _GUIDANCE.search(s.text)), MAX_GUIDANCE)
    facts += [KeyFact(kind="guidance", text=s.text, spans=[_span(s)]) for s in guidance]
    risk_section = find_section(split_sections(text), "item 1a", "risk factors", "risks")
    risks = risk_section.sentences(text) if risk_section else (s for s in sentences if _RISK.search(s.text))
    facts += [KeyFact(kind="risk_factor", text=s.text, spans=[_span(s)]) for s in islice(risks, MAX_RISKS)]
    return facts


def medical_facts(text: str) -> list[KeyFact]:
    sections = split_sections(text)
    findings = find_section(sections, "findings")
    impression = find_section(sections, "impression", "conclusion")
    if findings is not None:
        finding_sents = findings.sentences(text)
    elif impression is None:
        finding_sents = split_sentences(text)
    else:
        finding_sents = [s for s in split_sentences(text) if s.end <= impression.start]
    facts = [KeyFact(kind="finding", text=s.text, spans=[_span(s)]) for s in finding_sents[:MAX_FINDINGS]]
    if impression is not None:
        facts += [KeyFact(kind="impression", text=s.text, spans=[_span(s)]) for s in impression.sentences(text)]
    return facts


def key_facts(text: str, domain: str, sentences: list[Sentence] | None = None) -> list[KeyFact]:
    return medical_facts(text) if str(domain) == "medical" else finance_facts(text, sentences)
