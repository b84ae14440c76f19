"""Investigators, simulated: what a fraud team would have decided, and when, from the scores of a day.

Each day the team reviews the K cards (customers) with the highest score that day (the Card
Precision@K budget) and learns the truth about every transaction of those cards that day. The
ranking needs the whole day's scores, so the verdicts are decided at the END of the day plus the
review latency: `decided_at = day_end + latency`, never before any transaction it covers. Training
preparation and `argus fraud replay --review-per-day K` both use this, so the model is trained with
the feedback it will be given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DAY = 86400.0


@dataclass
class Verdicts:
    """One day's dispositions, ready for `FraudState.apply_dispositions`."""

    transaction_id: list[str]
    kind: list[str]  # "fraud" / "legitimate"
    decided_at: np.ndarray  # float64 epoch seconds
    customer_id: list[str]
    terminal_id: list[str]

    def __len__(self) -> int:
        return len(self.transaction_id)


def day_of(ts: np.ndarray) -> np.ndarray:
    """UTC day number of epoch seconds."""
    return np.floor(np.asarray(ts, np.float64) / DAY).astype(np.int64)


def review_day(ts: np.ndarray, transaction_id: Sequence[str], customer_id: Sequence[str],
               terminal_id: Sequence[str], scores: np.ndarray, is_fraud: np.ndarray, k: int,
               latency_s: float) -> Verdicts:
    """The verdicts on one day's transactions (all rows must fall in one UTC day): the k customers with
    the highest max score (ties: the smaller customer id) get every one of their day's transactions
    disposed, fraud or legitimate as the truth says, at the day's end + latency_s."""
    ts = np.asarray(ts, np.float64)
    if not len(ts) or k <= 0:
        return Verdicts([], [], np.zeros(0), [], [])
    days = day_of(ts)
    if days.min() != days.max():
        raise ValueError("review_day takes the transactions of one UTC day")
    if latency_s < 0 or not np.isfinite(latency_s):
        raise ValueError(f"review latency must be a finite time >= 0, not {latency_s}")
    scores = np.asarray(scores, np.float64)
    best: dict[str, float] = {}
    for c, s in zip(customer_id, scores.tolist()):
        if s > best.get(c, -np.inf):
            best[c] = s
    chosen = set(sorted(best, key=lambda c: (-best[c], c))[:k])
    rows = [i for i, c in enumerate(customer_id) if c in chosen]
    decided = (float(days[0]) + 1.0) * DAY + float(latency_s)
    fraud = np.asarray(is_fraud, bool)
    return Verdicts([str(transaction_id[i]) for i in rows], ["fraud" if fraud[i] else "legitimate" for i in rows],
                    np.full(len(rows), decided), [str(customer_id[i]) for i in rows], [str(terminal_id[i]) for i in rows])


def day_chunks(ts: np.ndarray, chunk: int) -> list[np.ndarray]:
    """Row index chunks of at most `chunk` rows that never cross a UTC day (rows in time order), so a day's
    verdicts can be applied before the next day is scored."""
    days = day_of(ts)
    out = []
    bounds = np.flatnonzero(np.diff(days)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(days)]):
        for s in range(int(lo), int(hi), chunk):
            out.append(np.arange(s, min(s + chunk, int(hi))))
    return out
