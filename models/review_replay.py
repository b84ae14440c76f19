"""One file in time order through a FraudState and a scorer, with chargebacks and simulated investigators.

The loop `argus fraud replay` runs (pipelines/fraud_replay.py) and `benchmarks/fraud_review.py`
measures, kept here so both are the same code: chunks in time order (never across a UTC day when
investigators are simulated), each chunk's labels handed to the state right after it is scored
(visible `labels_delay_days` later), and after each day the top K cards' verdicts
(models/review_simulator.py) decided at the day's end + the latency.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from models.fraud_state import DAY, FraudContext, FraudState, TxColumns
from models.review_simulator import day_chunks, review_day


def replay_columns(score: Callable[[FraudContext], np.ndarray], state: FraudState, cols: TxColumns,
                   labels: np.ndarray | None = None, review_per_day: int = 0, review_latency_s: float = 3600.0,
                   chunk: int = 4096, on_chunk: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """(scores in row order, dispositions given). Rows must be in time order. Investigators need labels."""
    scores = np.empty(len(cols), np.float32)
    reviewing = review_per_day > 0 and labels is not None
    chunks = day_chunks(cols.ts, chunk) if reviewing else \
        [np.arange(s, min(s + chunk, len(cols))) for s in range(0, len(cols), chunk)]
    day_start, disposed = 0, 0
    for n, idx in enumerate(chunks):
        part = cols.take(idx)
        scores[idx] = score(state.advance_columns(part))
        if labels is not None:  # known right after; visible to others only after the delay
            state.apply_label_columns(part.transaction_id, labels[idx])
        if reviewing and (n + 1 == len(chunks) or cols.ts[chunks[n + 1][0]] // DAY != cols.ts[idx[0]] // DAY):
            rows = np.arange(day_start, idx[-1] + 1)  # the day just scored
            v = review_day(cols.ts[rows], [cols.transaction_id[i] for i in rows], [cols.customer_id[i] for i in rows],
                           [cols.terminal_id[i] for i in rows], scores[rows], labels[rows], review_per_day,
                           review_latency_s)
            state.apply_dispositions(v.transaction_id, v.kind, v.decided_at, v.customer_id, v.terminal_id)
            disposed += len(v)
            day_start = idx[-1] + 1
        if on_chunk is not None:
            on_chunk(int(idx[-1]) + 1)
    return scores, disposed
