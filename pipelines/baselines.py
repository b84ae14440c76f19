"""Reference-free extractive baselines: LEAD-k and TextRank (PageRank over sentence similarity).

TextRank uses the Mihalcea & Tarau (2004) similarity (shared content words over the log lengths)
and networkx's PageRank (damping 0.85) over the weighted sentence graph.
"""

from __future__ import annotations

from models.sentence_selector import textrank_similarity
from pipelines.sentence_selection import words
from pipelines.sentences import split_sentences

STOPWORDS = frozenset(
    "a an the and or but of to in on for with at by from as is are was were be been it its this that these those "
    "we our you your they their i he she his her us will would can could should may might have has had do does did "
    "so not no than then there here also very just about into over more most".split()
)


def lead(sentences: list[str], k: int = 3) -> list[int]:
    return list(range(min(k, len(sentences))))


def textrank_scores(sentences: list[str], damping: float = 0.85) -> list[float]:
    import networkx as nx

    bags = [set(w for w in words(s) if w not in STOPWORDS) for s in sentences]
    n = len(bags)
    if n == 0:
        return []
    sim = textrank_similarity(bags)
    ranks = nx.pagerank(nx.from_numpy_array(sim), alpha=damping, weight="weight", max_iter=200, tol=1e-8)
    return [ranks[i] for i in range(n)]


def textrank(sentences: list[str], k: int = 3) -> list[int]:
    scores = textrank_scores(sentences)
    return sorted(sorted(range(len(sentences)), key=lambda i: -scores[i])[:k])


def baseline_summary(document: str, method: str, k: int = 3) -> str:
    sents = [s.text for s in split_sentences(document)]
    idx = lead(sents, k) if method == "lead3" else textrank(sents, k)
    return "\n".join(sents[i] for i in idx)
