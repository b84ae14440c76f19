"""Choosing summary sentences from scored candidates: MMR redundancy control under a length budget.

Maximal Marginal Relevance: repeatedly take the sentence maximising
`lam * relevance - (1 - lam) * max_overlap_with_already_chosen`, where overlap is the Jaccard of word
bigrams (unigrams for very short sentences); a candidate overlapping a chosen sentence by more than
`max_overlap` is never taken. Stops at `max_sentences` or when nothing more fits in `max_chars`.
The result is returned in document order.
"""

from __future__ import annotations

import re

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
    ws = [words(s) for s in sentences]
    grams = [set(zip(w, w[1:])) if len(w) > 3 else set(w) for w in ws]  # _grams, from the words read once
    # Sentences too short to carry content ("Thank you.") are skipped unless nothing else exists.
    pool = [i for i, w in enumerate(ws) if len(w) >= min_words] or list(range(len(sentences)))
    chosen: list[int] = []
    # red[i]: max overlap of i with the chosen sentences, updated with each new choice only (one
    # overlap per candidate and round, not one per chosen sentence: linear in the sentences)
    red = [0.0] * len(sentences)
    used = 0
    while pool and len(chosen) < max_sentences:
        best, best_val = None, -1e9
        for i in pool:
            if red[i] > max_overlap:
                continue
            val = lam * rel[i] - (1 - lam) * red[i]
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
        g = grams[best]
        for i in pool:
            o = overlap(grams[i], g)
            if o > red[i]:
                red[i] = o
    return sorted(chosen)
