"""What investigators decided, per customer and per terminal: the fraud state's review memory.

An investigator's disposition of a transaction (fraud / legitimate / unsure, decided at a time)
is a different kind of feedback from a chargeback label: it comes hours after the alert, not a
week, and only for the transactions someone reviewed. It is kept apart from the labels (its own
arrays, its own features, its own windows) and is VISIBLE to a transaction at time t only when
t >= decided_at. Visibility is computed at read time, so it never depends on when the
disposition message arrived or on batch boundaries.

Each key (a customer, a terminal) remembers at most `k` dispositions. Entries older than the
key's window (plus a day, so a slightly out-of-order transaction still finds them) are dead as
soon as the state's event-time clock passes them. When a key's live entries are full, the entry
with the LATEST decision time is the one dropped (the newcomer included): a disposition decided
after a transaction can therefore never push out one that transaction sees, so adding or changing
a disposition from a transaction's future never changes that transaction's features.

Per transaction id the latest visible decision stands (an investigator may dispose again: a
transaction first marked fraud and later legitimate counts as fraud between the two decisions and
as legitimate after). `unsure` is remembered (it supersedes an earlier verdict) but is counted in
no feature.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.keyed_rows import KeyedRows

DAY = 86400.0
REVIEW_FRAUD, REVIEW_LEGIT, REVIEW_UNSURE = 1, 2, 3
REVIEW_KINDS = {"fraud": REVIEW_FRAUD, "legitimate": REVIEW_LEGIT, "unsure": REVIEW_UNSURE}
# A compromised card in the handbook's simulator stays compromised 14 days, a terminal 28: each key's
# confirmed frauds count over that long.
REVIEW_WINDOW_DAYS = {"customer": 14.0, "terminal": 28.0}
REVIEW_MEMORY = 32  # dispositions remembered per key
# Numeric review fields of the current transaction (the scorer reads them when its config says `reviews`).
REVIEW_FIELDS = tuple(f"{who}_{what}" for who in ("customer", "terminal") for what in (
    "reviewed_frauds", "days_since_reviewed_fraud", "reviewed_legit", "days_since_reviewed_legit"))


def review_kind(value: str | int) -> int:
    """REVIEW_* code of a disposition kind ("fraud" / "legitimate" / "unsure", or the code itself)."""
    if isinstance(value, (int, np.integer)) and int(value) in REVIEW_KINDS.values():
        return int(value)
    kind = REVIEW_KINDS.get(str(getattr(value, "value", value)))
    if kind is None:
        raise ValueError(f"disposition kind {value!r} is not one of {', '.join(REVIEW_KINDS)}")
    return kind


class ReviewMemory(KeyedRows):
    """The dispositions of one kind of key (customers or terminals): up to `k` per key in dense rows."""

    ARRAYS = ("decided", "kind", "txid")
    FILL = dict(decided=np.nan, kind=0, txid=0)
    DTYPES = dict(decided=np.float64, kind=np.int8, txid=np.int64)
    PER_KEY_ARRAY, WHAT = "decided", "dispositions"

    def __init__(self, window_days: float, k: int = REVIEW_MEMORY, capacity: int = 256):
        self.window_s = float(window_days) * DAY
        super().__init__(k, capacity)

    @property
    def horizon_s(self) -> float:
        """How far behind the clock an entry is dead: the window and a day of out-of-order margin."""
        return self.window_s + DAY

    def add(self, keys: Sequence[str], hashes: Sequence[int], kinds: Sequence[int], decided: Sequence[float],
            clock: float) -> None:
        """Remember dispositions (in message order). The same transaction decided at the same time again:
        the later message's kind stands."""
        for key, h, kind, at in zip(keys, hashes, kinds, decided):
            j = self.row(key)
            d, kd, tx = self.decided[j], self.kind[j], self.txid[j]
            same = np.nonzero((tx == h) & (d == at))[0]
            if len(same):
                kd[same[0]] = kind
                continue
            dead = np.isnan(d) | (d < clock - self.horizon_s)
            if dead.any():
                s = int(np.argmax(dead))
            else:  # full: the latest decision goes (the newcomer, or the newest we hold)
                s = int(np.lexsort((tx, d))[-1])
                if (at, h) > (d[s], tx[s]):
                    continue
            d[s], kd[s], tx[s] = at, kind, h

    def features(self, keys: Sequence[str], ts: np.ndarray, events: np.ndarray | None = None):
        """([B, 4], [B, E] or None): confirmed frauds in the window, days since the latest one, confirmed legit,
        days since; and, for `events` (transaction id hashes [B, E] of the key's history slots), the verdict
        standing on each at ts (0 none / REVIEW_FRAUD / REVIEW_LEGIT; unsure reads as none)."""
        B = len(keys)
        out = np.zeros((B, 4), np.float64)
        verdict = None if events is None else np.zeros(events.shape, np.int64)
        w_days = self.window_s / DAY
        out[:, 1] = out[:, 3] = w_days
        if not self.index or not B:
            return out, verdict
        idx = self.rows(keys, create=False)
        has = np.nonzero(idx >= 0)[0]
        if not len(has):
            return out, verdict
        rows, t = idx[has], ts[has][:, None]
        d, kd, tx = self.decided[rows], self.kind[rows], self.txid[rows]
        known = ~np.isnan(d) & (d <= t)
        # a later visible decision on the same transaction supersedes this one
        later = (tx[:, :, None] == tx[:, None, :]) & known[:, None, :] & (d[:, None, :] > d[:, :, None])
        current = known & ~later.any(2)
        stands = current & (d >= t - self.window_s)
        if events is not None:
            hit = (events[has][:, :, None] == tx[:, None, :]) & (current & (kd != REVIEW_UNSURE))[:, None, :]
            verdict[has] = np.where(hit, kd[:, None, :], 0).max(2)
        for col, code in ((0, REVIEW_FRAUD), (2, REVIEW_LEGIT)):
            m = stands & (kd == code)
            n = m.sum(1)
            latest = np.where(m, d, -np.inf).max(1)
            out[has, col] = n
            out[has, col + 1] = np.where(n > 0, (ts[has] - latest) / DAY, w_days)
        return out, verdict

    def sweep(self, clock: float) -> None:
        """Forget entries past the horizon and free the rows left empty (changes no answer, only memory)."""
        if not self.index:
            return
        n = len(self.names)
        dead = self.decided[:n] < clock - self.horizon_s
        self.decided[:n][dead] = np.nan
        self.kind[:n][dead] = 0
        self.txid[:n][dead] = 0
        self.release(np.nonzero(np.isnan(self.decided[:n]).all(1))[0].tolist())


def review_features(customer: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """Scaled REVIEW_FIELDS columns from the two memories' raw [B, 4] features."""
    cols = []
    for raw in (customer, terminal):
        cols += [np.minimum(raw[:, 0], 8) / 4.0, np.log1p(raw[:, 1]) / 4.0,
                 np.minimum(raw[:, 2], 8) / 4.0, np.log1p(raw[:, 3]) / 4.0]
    return np.stack(cols, axis=-1).astype(np.float32)
