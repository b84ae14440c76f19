"""Section-aware splitting of reports, with character spans into the source.

Recognised layouts (first match by position wins; text before the first heading is a `preamble`):
- markdown headings (`# Risk factors`)
- 10-K / 10-Q items (`Item 1A. Risk Factors`, `ITEM 7. MANAGEMENT'S DISCUSSION ...`)
- earnings calls: prepared remarks vs the question-and-answer session (`Questions and Answers`,
  `Question-and-Answer Session`, or the Operator opening the line for questions)
- radiology: `FINDINGS:`, `IMPRESSION:`, `INDICATION:`, `COMPARISON:`, `TECHNIQUE:`, `HISTORY:`

Sections tile the document: every character belongs to exactly one section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pipelines.sentences import Sentence, split_sentences

# A markdown heading line: up to 3 spaces, 1-6 '#', blanks, a title, optional closing blanks/#s. The
# pattern finds candidate lines only (no overlapping quantifiers: the line is then read by
# `_markdown_title`); the former `(?P<title>[^\n]+?)[ \t#]*$` retried the tail at every title
# length, quadratic in a line of blanks or '#'s.
# The lookahead keeps only lines that have a title (a non-blank after the '#'s, or two blanks): a text of
# '# ' lines cost a Python step per line to find none.
_MARKDOWN = re.compile(r"^[ \t]{0,3}#{1,6}(?=[ \t]+[^ \t\n]|[ \t]{2})[ \t][^\n]*", re.MULTILINE)
_SEC_ITEM = re.compile(r"^[ \t]*(?P<title>item[ \t]+\d{1,2}[a-c]?\.[^\n]{0,120})$", re.MULTILINE | re.IGNORECASE)
_RADIOLOGY = re.compile(
    r"^[ \t]*(?P<title>findings|impression|indication|comparison|technique|history|clinical history|conclusion)[ \t]*:",
    re.MULTILINE | re.IGNORECASE,
)
_QA = re.compile(
    r"^[^\n]*(?:questions?[- ]and[- ]answers?(?: session)?|q&a session"
    r"|operator:?[^\n]{0,80}(?:first question|open (?:up )?the (?:line|call|floor) for questions))[^\n]*$",
    re.MULTILINE | re.IGNORECASE,
)


@dataclass(frozen=True)
class Section:
    name: str  # normalised: 'risk factors', 'item 1a', 'findings', 'prepared remarks', 'q&a', 'preamble'
    title: str  # the heading as written ('' for the preamble / implicit sections)
    start: int
    end: int
    body_start: int = -1  # where the text after the heading begins (-1: same as start)

    @property
    def body(self) -> int:
        return self.start if self.body_start < 0 else self.body_start

    def text(self, source: str) -> str:
        return source[self.start : self.end]

    def sentences(self, source: str) -> list[Sentence]:
        return split_sentences(source[self.body : self.end], offset=self.body)


_ITEM_NUMBER = re.compile(r"item\s+(\d{1,2}[a-c]?)\.")
_BLANK_RUN = re.compile(r"\s+")


@lru_cache(maxsize=4096)  # headings repeat (a 10-K's 'Item 1A.' lines, a hostile text's thousands)
def _normalise(title: str) -> str:
    t = title.strip().rstrip(":").strip().lower()
    m = _ITEM_NUMBER.match(t)
    if m:
        return f"item {m.group(1)}"
    return _BLANK_RUN.sub(" ", t)


def _markdown_title(line: str) -> str | None:
    """The title of a markdown heading line `_MARKDOWN` found, exactly what
    `^[ \t]{0,3}(#{1,6})[ \t]+(?P<title>[^\n]+?)[ \t#]*$` would capture, or None (no heading)."""
    after = line.lstrip(" \t").lstrip("#")  # the pattern guarantees <= 3 blanks and 1-6 '#'
    rest = after.lstrip(" \t")
    if rest:
        return rest[: max(1, len(rest.rstrip(" \t#")))]
    blanks = len(after)
    return after[-1] if blanks >= 2 else None  # '#  ': the title is the last blank


def _headings(text: str) -> list[tuple[int, str, str, int]]:
    """(position, name, title, body start) of every heading found, in document order."""
    found: list[tuple[int, str, str, int]] = []
    for m in _MARKDOWN.finditer(text):
        title = _markdown_title(m.group(0))
        if title is not None:
            found.append((m.start(), _normalise(title), title.strip(), m.end()))
    for rx in (_SEC_ITEM, _RADIOLOGY):
        for m in rx.finditer(text):
            found.append((m.start(), _normalise(m.group("title")), m.group("title").strip(), m.end()))
    qa = _QA.search(text)
    if qa and not found:
        # An earnings call: what comes before the Q&A marker is the prepared remarks.
        found = [(0, "prepared remarks", "", 0), (qa.start(), "q&a", qa.group(0).strip(), qa.end())]
    found.sort(key=lambda x: x[0])
    dedup: list[tuple[int, str, str, int]] = []
    for item in found:
        if not dedup or item[0] != dedup[-1][0]:
            dedup.append(item)
    return dedup


def split_sections(text: str) -> list[Section]:
    """The sections of `text`; a document with no recognisable heading is one section named 'body'."""
    heads = _headings(text)
    if not heads:
        return [Section("body", "", 0, len(text))]
    sections: list[Section] = []
    if heads[0][0] > 0 and text[: heads[0][0]].strip():
        sections.append(Section("preamble", "", 0, heads[0][0]))
    elif heads[0][0] > 0:
        heads[0] = (0, *heads[0][1:])
    for i, (pos, name, title, body) in enumerate(heads):
        end = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        sections.append(Section(name, title, pos, end, min(body, end)))
    return sections


def find_section(sections: list[Section], *names: str) -> Section | None:
    """The first section whose normalised name starts with one of `names`."""
    return next((s for s in sections if s.name.startswith(names)), None)
