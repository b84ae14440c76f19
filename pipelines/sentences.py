"""Sentence splitting that keeps character spans into the source.

A sentence is `source[start:end]` exactly (whitespace trimmed), so extractive summaries and key facts
can cite the source byte for byte. Rules, not a model: newlines end a sentence (ECTSum, bullet
lists), so do `.`/`!`/`?` followed by space and an upper-case letter, digit or quote, unless the word
before the stop is a known abbreviation or a single initial. "apex.There" (a missing space, common in
radiology reports) also ends a sentence.

Worst-case time is linear in the length of the text: the boundary pattern has no nested or
overlapping quantifiers (each alternative is a fixed-width look-behind plus one run), and the
abbreviation test reads only the word before the stop, never the pending chunk (a run of "A. A. A."
once rescanned the whole pending sentence at every stop: 21 s for 60 KB).
"""

from __future__ import annotations

import re
from functools import partial
from itertools import accumulate, compress, repeat
from operator import add, contains, itemgetter, mul, not_
from typing import NamedTuple

from models.collector import MANY, collector_paused

# Abbreviations after which a full stop does not end a sentence (lower-case, without the dot).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st inc ltd co corp plc llc no nos vs etc e.g i.e fig figs approx est "
    "jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.s.a a.m p.m dept gov sen rep".split()
)

# Sentence boundaries, kept by `re.split` (their lengths give the offsets). A line break takes the blanks
# on both sides (a blank run is entered only at its start: linear), so that a piece between two
# boundaries is already stripped; where they fall is otherwise as a stop/space/capital rule has them.
_SPLIT = re.compile(
    r"""(   (?<=[.!?])["')\]]*\s+(?=["'(\[]?[A-Z0-9])   # stop, closing quotes, space, capital/digit
          | (?<=[a-z]{2}\.)(?=[A-Z][a-z])              # 'apex.There': a stop with no space
          | (?<![^\S\n])[^\S\n]*\n\s*                # line breaks always end a sentence
        )""",
    re.VERBOSE,
)


class Sentence(NamedTuple):  # a tuple: a million of them (one per line of a hostile input) cost 0.3 s, not 1.4 s
    text: str
    start: int
    end: int


_ALNUM = re.compile(r"[^\W_]")
_new_sentence = partial(tuple.__new__, Sentence)  # Sentence from a (text, start, end) tuple, without a Python call
_QUOTES = "(\"'"
_LONGEST_ABBREVIATION = max(len(a) for a in ABBREVIATIONS)
_ABBREVIATED = frozenset(a + "." for a in ABBREVIATIONS)


def _ends_with_abbreviation(text: str, start: int, end: int) -> bool:
    """Whether `text[start:end]` ends with '<word>.' (the word: the non-space run before the stop, leading
    quotes/brackets dropped) where the word is a known abbreviation or a single letter.

    Reads backwards over at most the last `_LONGEST_ABBREVIATION + 1` characters of the word (plus a run
    of leading quotes), never the whole pending chunk.
    """
    stop = end - 1
    if stop <= start or text[stop] != ".":
        return False
    j, budget = stop, _LONGEST_ABBREVIATION + 1
    while j > start and budget and not text[j - 1].isspace():
        j -= 1
        budget -= 1
    if j == stop:
        return False  # whitespace (or the chunk start) right before the stop: a bare '.'
    if j > start and not text[j - 1].isspace():
        # The word is longer than any abbreviation, unless all that precedes is quotes/brackets.
        while j > start and text[j - 1] in _QUOTES:
            j -= 1
        if j > start and not text[j - 1].isspace():
            return False
    word = text[j:stop].lower().lstrip(_QUOTES)
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def split_sentences(text: str, offset: int = 0) -> list[Sentence]:
    """Sentences of `text` with [start, end) offsets (plus `offset`) such that text[start:end] == sentence."""
    pieces, starts, ends = _pieces(text)
    if offset:
        starts, ends = map(add, starts, repeat(offset)), map(add, ends, repeat(offset))
    # a sentence needs a letter or digit ([^\W_] is str.isalnum()); the search stops at the first one
    keep = map(_ALNUM.search, pieces)
    with collector_paused(len(pieces) > MANY):
        return list(map(_new_sentence, compress(zip(pieces, starts, ends), keep)))


def sentence_texts(text: str) -> list[str]:
    """`[s.text for s in split_sentences(text)]`, without building the sentences."""
    pieces = _pieces(text)[0]
    return list(compress(pieces, map(_ALNUM.search, pieces)))


def first_sentences(text: str, n: int, offset: int = 0) -> list[Sentence]:
    """`split_sentences(text, offset)[:n]`, from the shortest prefix (growing 8x) that fixes them: once
    a prefix holds two sentences more, the first n (and the boundaries after them, which read two
    characters ahead at most) are those of the whole text. A caller that needs a few sentences of a
    huge text splits about what it needs."""
    size = 4096
    while size < len(text) // 2:  # past half the text, the whole text
        sentences = split_sentences(text[:size], offset)
        if len(sentences) >= n + 2:
            return sentences[:n]
        size *= 8  # the prefixes tried before the one that answers cost at most half of it more
    return split_sentences(text, offset)[:n]


def _pieces(text: str) -> tuple[list[str], list[int], list[int]]:
    """The stripped text between kept boundaries, with its [start, end); some hold no letter or digit."""
    # One `re.split` and bulk C-level maps (offsets, the letter test, the tuples) instead of a Python
    # step per boundary: a text of a million one-word lines cost 1.5 us a sentence, now a fifth of it.
    # Only the boundaries without a line break (after a stop) are visited one by one.
    parts = _SPLIT.split(text)  # piece, boundary, piece, ..., piece
    offs = list(accumulate(map(len, parts), initial=0))  # piece k: offs[2k]:offs[2k+1]; boundary k after it
    bounds = parts[1::2]
    dropped: list[int] = []  # boundaries after an abbreviation: not a sentence end
    if "." in text or "!" in text or "?" in text:  # else every boundary is a line break
        soft = list(compress(range(len(bounds)), map(not_, map(contains, bounds, repeat("\n")))))
        # The piece before a soft boundary ends with its stop; its last word (read in bulk) is the word the
        # abbreviation test reads, unless the boundary before the piece was a dropped one without a blank
        # ('xx.Yy.'): then the word may reach back over it, and `_ends_with_abbreviation` reads it.
        words = list(map(str.lower, map(str.lstrip, map(itemgetter(-1), map(str.rsplit, map(
            parts.__getitem__, map(mul, soft, repeat(2))))), repeat(_QUOTES))))  # never empty: the stop ends it
        # a known abbreviation, or one letter and '.'; decided once per distinct word (stops repeat words)
        known = {w: w in _ABBREVIATED or (len(w) == 2 and w[1] == "." and w[0].isalpha()) for w in set(words)}
        abbreviated = list(map(known.__getitem__, words))
        if "" not in bounds:  # no zero-width boundary ('apex.There'): the bulk test is the whole test
            dropped = list(compress(soft, abbreviated))
        pending = last = -2
        for k, abbrev in zip(soft, abbreviated) if "" in bounds else ():
            if last != k - 1:
                pending = offs[2 * k]  # boundary k-1 (or the text start) was kept: the sentence starts after it
            elif not bounds[k - 1]:
                abbrev = _ends_with_abbreviation(text, pending, offs[2 * k + 1])
            if abbrev:
                dropped.append(k)
                last = k
    if dropped:
        gone = set(dropped)
        kept = list(compress(range(len(bounds)), map(not_, map(gone.__contains__, range(len(bounds))))))
        starts = [0, *map(offs.__getitem__, map(add, map(mul, kept, repeat(2)), repeat(2)))]  # after boundary k
        ends = [*map(offs.__getitem__, map(add, map(mul, kept, repeat(2)), repeat(1))), len(text)]  # before it
        pieces = list(map(text.__getitem__, map(slice, starts, ends)))
    else:
        starts, ends, pieces = offs[0::2], offs[1::2], parts[0::2]
    # Boundaries take the blanks next to them, so only the text's own leading and trailing blanks are
    # left to strip.
    head = pieces[0]
    starts[0] += len(head) - len(head.lstrip())
    pieces[0] = head.strip()
    if len(pieces) > 1:
        pieces[-1] = pieces[-1].rstrip()
    ends[-1] = starts[-1] + len(pieces[-1])
    return pieces, starts, ends
