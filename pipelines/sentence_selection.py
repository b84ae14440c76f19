"""Choosing summary sentences from scored candidates: MMR redundancy control under a length budget.

Maximal Marginal Relevance: repeatedly take the sentence maximising
`lam * relevance - (1 - lam) * max_overlap_with_already_chosen`, where overlap is the Jaccard of word
bigrams (unigrams for very short sentences); a candidate overlapping a chosen sentence by more than
`max_overlap` is never taken. Stops at `max_sentences` or when nothing more fits in `max_chars`.
The result is returned in document order.
"""

from __future__ import annotations

import re
from itertools import compress, repeat
from operator import add, ge, mul, sub, truediv

from models.collector import MANY, collector_paused

_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _grams(text: str) -> set:
    w = words(text)
    return set(zip(w, w[1:])) if len(w) > 3 else set(w)


def overlap(a: set, b: set) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def mmr_select(
    sentences: list[str],
    scores: list[float],
    max_sentences: int,
    max_chars: int,
    lam: float = 0.7,
    max_overlap: float = 0.5,
    min_words: int = 3,
) -> list[int]:
    if not sentences:
        return []
    lo, hi = min(scores), max(scores)
    rel = [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in scores]
    # Words and grams once per distinct text (a hostile text repeats its sentences), the collector paused
    # while they are built (a million long-lived sets started full collections: 1.7 s/MB of one-word
    # lines), and each round's scan and overlap update by C-level maps over the pool.
    texts = list(dict.fromkeys(sentences))
    with collector_paused(len(texts) > MANY):
        text_words = list(map(_WORD.findall, map(str.lower, texts)))
        text_grams = [set(zip(w, w[1:])) if len(w) > 3 else set(w) for w in text_words]  # _grams, words read once
    which = list(map({t: k for k, t in enumerate(texts)}.__getitem__, sentences))
    n_words = list(map(len, map(text_words.__getitem__, which)))
    # Sentences too short to carry content ("Thank you.") are skipped unless nothing else exists.
    pool = list(compress(range(len(sentences)), map(ge, n_words, repeat(min_words)))) or list(range(len(sentences)))
    chosen: list[int] = []
    # red[i]: max overlap of i with the chosen sentences, updated with each new choice only (one
    # overlap per candidate and round, not one per chosen sentence: linear in the sentences)
    red = [0.0] * len(sentences)
    used = 0
    while pool and len(chosen) < max_sentences:
        eligible = [i for i, r in zip(pool, map(red.__getitem__, pool)) if not r > max_overlap]
        values = map(sub, map(mul, repeat(lam), map(rel.__getitem__, eligible)),
                     map(mul, repeat(1 - lam), map(red.__getitem__, eligible)))  # lam * rel - (1 - lam) * red
        best, best_val = None, -1e9
        for i, val in zip(eligible, values):
            if val > best_val:
                best, best_val = i, val
        if best is None:
            break
        pool.remove(best)
        extra = len(sentences[best]) + (1 if chosen else 0)
        if used + extra > max_chars:
            continue  # does not fit: a shorter one may
        chosen.append(best)
        used += extra
        g = text_grams[which[best]]
        if not g:
            continue  # overlaps with an empty set are 0
        # overlap(a, g) = |a & g| / |a | g|, |a | g| = |a| + |g| - |a & g| (a empty: 0 / |g|)
        grams = list(map(text_grams.__getitem__, map(which.__getitem__, pool)))
        common = list(map(len, map(g.intersection, grams)))
        union = map(sub, map(add, map(len, grams), repeat(len(g))), common)
        for i, o in zip(pool, map(truediv, common, union)):
            if o > red[i]:
                red[i] = o
    return sorted(chosen)
