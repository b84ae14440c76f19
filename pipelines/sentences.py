"""Sentence splitting that keeps character spans into the source.

A sentence is `source[start:end]` exactly (whitespace trimmed), so extractive summaries and key facts
can cite the source byte for byte. Rules, not a model: newlines end a sentence (ECTSum, bullet
lists), so do `.`/`!`/`?` followed by space and an upper-case letter, digit or quote, unless the word
before the stop is a known abbreviation or a single initial. "apex.There" (a missing space, common in
radiology reports) also ends a sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Abbreviations after which a full stop does not end a sentence (lower-case, without the dot).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st inc ltd co corp plc llc no nos vs etc e.g i.e fig figs approx est "
    "jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.s.a a.m p.m dept gov sen rep".split()
)

_BOUNDARY = re.compile(
    r"""(?<=[.!?])["')\]]*\s+(?=["'(\[]?[A-Z0-9])   # stop, closing quotes, space, capital/digit
      | (?<=[a-z]{2}\.)(?=[A-Z][a-z])              # 'apex.There': a stop with no space
      | \n+                                        # line breaks always end a sentence
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int
    end: int


def _ends_with_abbreviation(chunk: str) -> bool:
    m = re.search(r"(\S+)\.\s*$", chunk)
    if not m:
        return False
    word = m.group(1).lower().lstrip("(\"'")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def split_sentences(text: str, offset: int = 0) -> list[Sentence]:
    """Sentences of `text` with [start, end) offsets (plus `offset`) such that text[start:end] == sentence."""
    sentences: list[Sentence] = []
    start = 0
    pending = 0  # start of a sentence carried over an abbreviation
    for m in _BOUNDARY.finditer(text):
        chunk = text[pending : m.start()]
        if "\n" not in m.group(0) and _ends_with_abbreviation(chunk):
            continue
        _append(sentences, text, pending, m.start(), offset)
        pending = m.end()
        start = pending
    _append(sentences, text, max(start, pending), len(text), offset)
    return sentences


def _append(out: list[Sentence], text: str, start: int, end: int, offset: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped or not any(ch.isalnum() for ch in stripped):
        return
    lead = len(piece) - len(piece.lstrip())
    s = start + lead
    e = s + len(stripped)
    out.append(Sentence(stripped, s + offset, e + offset))
