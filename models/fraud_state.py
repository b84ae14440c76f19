"""The explicit, small state a fraud stream job keeps, and the encoded context it hands the scorer.

Per customer and per terminal: a ring buffer of the last N (customer) / M (terminal) events
(time, amount, gap to the key's previous event, counterpart id hash, label) and a short memory
of the key's last K known frauds. Everything lives in numpy arrays indexed by a dense key number,
so reading the context of a batch is fancy indexing and writing it is one scatter per wave.

Rules (the stream job and the training data preparation share them, so training sees exactly
what the stream will see):

* Labels are stored as soon as `apply_label` receives them, but a label is VISIBLE to a
  transaction at time t only if t >= event_time + labels_delay_days (a bank learns about
  chargebacks about a week late). Visibility is computed at read time, so it never depends on
  batch boundaries or on when the label message happened to arrive.
* A label for a transaction the state has not seen yet waits in `pending` (keyed by transaction
  id) and is applied when that transaction arrives.
* Out-of-order timestamps are accepted. Events stay in ARRIVAL order in the rings; a transaction
  sees as history only the events that arrived before it AND are not later than its own
  timestamp. Gaps and ages are clipped at 0 (a late event never makes a negative gap).
* Within one batch the semantics are sequential: `advance_columns` reads and writes in "waves"
  so that a transaction sees the batch's earlier transactions of its customer/terminal, exactly
  as if the batch had been processed one by one.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # the contracts need pydantic; training on a bare GPU image does not import them
    from pipelines.contracts import Label, Transaction

SNAPSHOT_VERSION = 1
DAY = 86400.0
ID_BUCKETS = 1024  # hashed-id embedding buckets
FRAUD_WINDOW_DAYS = 35.0  # known frauds counted over this window (a handbook compromise lasts 28 days)

# Numeric fields of one history event, in order (the scorer embeds them field-wise).
HIST_FIELDS = (
    "log_amount", "amount", "log_gap", "log_age", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos",
    "same_counterpart", "amount_vs_current",
)
# Numeric fields of the current transaction.
CURRENT_FIELDS = (
    "log_amount", "amount", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos",
    "customer_log_gap", "terminal_log_gap", "customer_history_len", "terminal_history_len",
    "amount_vs_customer_mean", "customer_known_frauds", "customer_days_since_fraud",
    "terminal_known_frauds", "terminal_days_since_fraud",
    # the fraud-detection handbook's aggregates, from per-key daily buckets (terminal ones behind the label delay)
    "customer_nb_tx_1d", "customer_nb_tx_7d", "customer_nb_tx_30d",
    "customer_avg_amount_1d", "customer_avg_amount_7d", "customer_avg_amount_30d",
    "terminal_nb_tx_1d", "terminal_nb_tx_7d", "terminal_nb_tx_30d",
    "terminal_risk_1d", "terminal_risk_7d", "terminal_risk_30d",
)
WINDOWS = (1, 7, 30)
DAY_BUCKETS = 48  # per-key daily counters kept: >= label delay + the longest window
# Label state of a history event: 0 = empty slot, 1 = no visible label, 2 = known legit, 3 = known fraud.
LABEL_EMPTY, LABEL_UNKNOWN, LABEL_LEGIT, LABEL_FRAUD = 0, 1, 2, 3


def id_hash(value: str) -> int:
    """A stable signed 64-bit hash of an id (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little", signed=True)


def to_seconds(ts: datetime) -> float:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


@dataclass
class TxColumns:
    """A batch of transactions as columns (the columnar fast path; lists of `Transaction` convert to it)."""

    transaction_id: Sequence[str]
    ts: np.ndarray  # float64 epoch seconds
    customer_id: Sequence[str]
    terminal_id: Sequence[str]
    amount: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_transactions(cls, transactions: Sequence["Transaction"]) -> "TxColumns":
        return cls(
            transaction_id=[t.transaction_id for t in transactions],
            ts=np.fromiter((to_seconds(t.timestamp) for t in transactions), np.float64, len(transactions)),
            customer_id=[t.customer_id for t in transactions],
            terminal_id=[t.terminal_id for t in transactions],
            amount=np.fromiter((t.amount for t in transactions), np.float64, len(transactions)),
        )

    def take(self, idx: np.ndarray) -> "TxColumns":
        return TxColumns([self.transaction_id[i] for i in idx], self.ts[idx], [self.customer_id[i] for i in idx],
                         [self.terminal_id[i] for i in idx], self.amount[idx])


@dataclass
class FraudContext:
    """The encoded context of a batch: customer history slots, then terminal history slots, then the current tx."""

    hist_num: np.ndarray  # float32 [B, N+M, len(HIST_FIELDS)]
    hist_label: np.ndarray  # int64 [B, N+M] LABEL_*
    hist_counterpart: np.ndarray  # int64 [B, N+M] hashed counterpart bucket (terminal for customer history)
    cur_num: np.ndarray  # float32 [B, len(CURRENT_FIELDS)]
    cur_ids: np.ndarray  # int64 [B, 2] hashed customer, terminal buckets
    # raw values kept for human-readable reasons
    hist_amount: np.ndarray  # float32 [B, N+M]
    hist_age_s: np.ndarray  # float32 [B, N+M]

    def __len__(self) -> int:
        return self.cur_num.shape[0]

    def take(self, idx: np.ndarray) -> "FraudContext":
        return FraudContext(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list["FraudContext"]) -> "FraudContext":
        return FraudContext(*(np.concatenate([getattr(p, f) for p in parts]) for f in FraudContext.__dataclass_fields__))


class _Rings:
    """Ring buffers of the last `n` events for each key of one kind (customers or terminals)."""

    def __init__(self, n: int, k_frauds: int, capacity: int = 1024):
        self.n, self.k = n, k_frauds
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.buckets: list[int] = []  # hashed-id bucket of each key, computed once
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        n, k = self.n, self.k
        self.time = np.full((cap, n), np.nan)
        self.amount = np.zeros((cap, n), np.float32)
        self.gap = np.zeros((cap, n), np.float32)
        self.counterpart = np.zeros((cap, n), np.int64)
        self.txid = np.zeros((cap, n), np.int64)
        self.label = np.full((cap, n), -1, np.int8)
        self.count = np.zeros(cap, np.int64)
        self.last_time = np.full(cap, np.nan)
        self.fraud_time = np.full((cap, k), np.nan)
        self.fraud_count = np.zeros(cap, np.int64)
        self.labelled = np.zeros(cap, np.int64)  # labels received (fraud or legit)
        # daily buckets (slot = day % DAY_BUCKETS, stamped with the day they hold)
        self.day_stamp = np.full((cap, DAY_BUCKETS), -1, np.int64)
        self.day_tx = np.zeros((cap, DAY_BUCKETS), np.float32)
        self.day_amount = np.zeros((cap, DAY_BUCKETS), np.float64)
        self.day_fraud = np.zeros((cap, DAY_BUCKETS), np.float32)

    ARRAYS = ("time", "amount", "gap", "counterpart", "txid", "label", "count", "last_time", "fraud_time",
              "fraud_count", "labelled", "day_stamp", "day_tx", "day_amount", "day_fraud")

    def count_day(self, idx: np.ndarray, ts: np.ndarray, amount: np.ndarray) -> None:
        """Add one transaction per key (unique keys) to its day's bucket; a stale bucket is reset first."""
        day = np.floor(ts / DAY).astype(np.int64)
        slot = day % DAY_BUCKETS
        stale = self.day_stamp[idx, slot] != day
        newer = stale & (self.day_stamp[idx, slot] < day)  # a very late event never overwrites a newer day
        r, sl = idx[newer], slot[newer]
        self.day_stamp[r, sl] = day[newer]
        self.day_tx[r, sl] = 0
        self.day_amount[r, sl] = 0
        self.day_fraud[r, sl] = 0
        ok = self.day_stamp[idx, slot] == day
        self.day_tx[idx[ok], slot[ok]] += 1
        self.day_amount[idx[ok], slot[ok]] += amount[ok]

    def windows(self, rows: np.ndarray, known: np.ndarray, ts: np.ndarray, lo: float, w: float):
        """Per row: (tx count, amount sum, fraud count) over days with lo <= age_days < lo + w."""
        age = np.floor(ts / DAY).astype(np.int64)[:, None] - self.day_stamp[rows]
        m = (self.day_stamp[rows] >= 0) & (age >= lo) & (age < lo + w) & known[:, None]
        return ((self.day_tx[rows] * m).sum(1), (self.day_amount[rows] * m).sum(1), (self.day_fraud[rows] * m).sum(1))

    def _grow(self, need: int) -> None:
        cap = len(self.count)
        if need <= cap:
            return
        new_cap = max(need, 2 * cap)
        old = {a: getattr(self, a) for a in self.ARRAYS}
        self._alloc(new_cap)
        for a, arr in old.items():
            getattr(self, a)[:cap] = arr

    def lookup(self, keys: Sequence[str], create: bool) -> np.ndarray:
        """Dense indices of keys; -1 for unknown keys when not creating."""
        out = np.empty(len(keys), np.int64)
        index = self.index
        for i, key in enumerate(keys):
            j = index.get(key)
            if j is None:
                if not create:
                    out[i] = -1
                    continue
                j = index[key] = len(self.names)
                self.names.append(key)
                self.buckets.append(id_hash(key) % ID_BUCKETS)
            out[i] = j
        if create:
            self._grow(len(self.names))
        return out

    def bucket_of(self, keys: Sequence[str], idx: np.ndarray) -> np.ndarray:
        b = self.buckets
        return np.fromiter((b[j] if j >= 0 else id_hash(k) % ID_BUCKETS for k, j in zip(keys, idx.tolist())),
                           np.int64, len(keys))

    def ordered(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, slots): the ring slots of each key, oldest first; unknown keys point at row 0 (masked later)."""
        safe = np.maximum(idx, 0)
        start = self.count[safe] - self.n
        slots = (start[:, None] + np.arange(self.n)[None, :]) % self.n
        return safe, slots

    def write(self, idx: np.ndarray, ts: np.ndarray, amount: np.ndarray, counterpart: np.ndarray,
              txid: np.ndarray, label: np.ndarray) -> None:
        """Append one event per key; keys in `idx` must be unique (one wave)."""
        slot = self.count[idx] % self.n
        last = self.last_time[idx]
        self.gap[idx, slot] = np.where(np.isnan(last), -1.0, np.maximum(ts - np.nan_to_num(last), 0.0))
        self.time[idx, slot] = ts
        self.amount[idx, slot] = amount
        self.counterpart[idx, slot] = counterpart
        self.txid[idx, slot] = txid
        self.label[idx, slot] = label
        self.count[idx] += 1
        self.last_time[idx] = np.fmax(last, ts)

    def remember_fraud(self, j: int, event_time: float) -> None:
        slot = self.fraud_count[j] % self.k
        self.fraud_time[j, slot] = event_time
        self.fraud_count[j] += 1

    # -- snapshot helpers ------------------------------------------------------------------------
    def export(self, keys: Iterable[str] | None) -> tuple[list[str], dict[str, np.ndarray]]:
        names = self.names if keys is None else [k for k in keys if k in self.index]
        rows = np.array([self.index[k] for k in names], np.int64)
        return names, {a: getattr(self, a)[rows] for a in self.ARRAYS}

    def merge(self, names: list[str], arrays: dict[str, np.ndarray]) -> None:
        rows = self.lookup(names, create=True)
        for a in self.ARRAYS:
            getattr(self, a)[rows] = arrays[a]


class FraudState:
    """Per-customer / per-terminal history and label memory of a fraud stream (see the module doc)."""

    def __init__(self, customer_history: int = 7, terminal_history: int = 7, labels_delay_days: float = 7.0,
                 fraud_memory: int = 8, max_tracked_ids: int = 1_000_000):
        self.customer_history, self.terminal_history = int(customer_history), int(terminal_history)
        self.labels_delay_days = float(labels_delay_days)
        self.fraud_memory = int(fraud_memory)
        self.max_tracked_ids = int(max_tracked_ids)
        self.customers = _Rings(self.customer_history, self.fraud_memory)
        self.terminals = _Rings(self.terminal_history, self.fraud_memory)
        # transaction id hash -> (customer row, terminal row, event time): where a later label goes.
        self._where: dict[int, tuple[int, int, float]] = {}
        # labels that arrived before their transaction: id hash -> is_fraud
        self.pending: dict[int, bool] = {}

    @classmethod
    def from_settings(cls, fraud_settings) -> "FraudState":
        return cls(fraud_settings.customer_history, fraud_settings.terminal_history, fraud_settings.labels_delay_days)

    @property
    def delay_s(self) -> float:
        return self.labels_delay_days * DAY

    def __len__(self) -> int:
        return len(self._where)

    # -- labels ------------------------------------------------------------------------------------
    def apply_label(self, label: "Label") -> bool:
        """Record a chargeback/confirmation. True if its transaction is known, False if it waits in `pending`."""
        return self.apply_label_columns([label.transaction_id], np.array([label.is_fraud]))[0]

    def apply_labels(self, labels: Iterable["Label"]) -> list[bool]:
        labels = list(labels)
        return self.apply_label_columns([lb.transaction_id for lb in labels], np.array([lb.is_fraud for lb in labels]))

    def apply_label_columns(self, transaction_ids: Sequence[str], is_fraud: np.ndarray) -> list[bool]:
        fraud = np.asarray(is_fraud, bool)
        hashes = [id_hash(str(t)) for t in transaction_ids]
        known, where, known_fraud, done = [], [], [], []
        seen: set[int] = set()
        for h, f in zip(hashes, fraud.tolist()):
            w = self._where.get(h)
            if w is None or h in seen:
                if w is None:
                    self.pending[h] = f
                done.append(w is not None)
                continue
            seen.add(h)
            known.append(h)
            where.append(w)
            known_fraud.append(f)
            done.append(True)
        if known:
            self._label_known(np.array(known, np.int64), where, np.array(known_fraud, bool))
        return done

    def _label_known(self, hashes: np.ndarray, where: list[tuple[int, int, float]], fraud: np.ndarray) -> None:
        c = np.array([w[0] for w in where], np.int64)
        t = np.array([w[1] for w in where], np.int64)
        et = np.array([w[2] for w in where], np.float64)
        for rings, rows in ((self.customers, c), (self.terminals, t)):
            hit = (rings.txid[rows] == hashes[:, None]) & ~np.isnan(rings.time[rows])
            r, slot = np.nonzero(hit)
            rings.label[rows[r], slot] = fraud[r].astype(np.int8)
            np.add.at(rings.labelled, rows, 1)
            for j, e in zip(rows[fraud].tolist(), et[fraud].tolist()):
                rings.remember_fraud(j, e)
                d = int(np.floor(e / DAY))
                if rings.day_stamp[j, d % DAY_BUCKETS] == d:
                    rings.day_fraud[j, d % DAY_BUCKETS] += 1
        # a transaction is labelled once; forgetting it bounds memory and makes a duplicate label a no-op
        for h in hashes.tolist():
            del self._where[h]

    # -- reading and writing ----------------------------------------------------------------------
    def context_batch(self, transactions: Sequence["Transaction"]) -> FraudContext:
        """Read-only context of each transaction against the current state (no intra-batch history)."""
        return self.context_columns(TxColumns.from_transactions(transactions))

    def update_batch(self, transactions: Sequence["Transaction"]) -> None:
        self.update_columns(TxColumns.from_transactions(transactions))

    def advance_batch(self, transactions: Sequence["Transaction"]) -> FraudContext:
        """Context then update, with one-by-one semantics inside the batch (what the scorer uses)."""
        return self.advance_columns(TxColumns.from_transactions(transactions))

    def advance_columns(self, cols: TxColumns) -> FraudContext:
        waves = self._waves(cols.customer_id, cols.terminal_id)
        if waves.max(initial=0) == 0:
            ctx = self.context_columns(cols)
            self.update_columns(cols)
            return ctx
        parts, order = [], []
        for w in range(int(waves.max()) + 1):
            idx = np.nonzero(waves == w)[0]
            sub = cols.take(idx)
            parts.append(self.context_columns(sub))
            self.update_columns(sub)
            order.append(idx)
        ctx = FraudContext.concat(parts)
        inverse = np.empty(len(cols), np.int64)
        inverse[np.concatenate(order)] = np.arange(len(cols))
        return ctx.take(inverse)

    @staticmethod
    def _waves(customers: Sequence[str], terminals: Sequence[str]) -> np.ndarray:
        """Wave of each row: 1 + the wave of its latest earlier row sharing a customer or a terminal."""
        last_c: dict[str, int] = {}
        last_t: dict[str, int] = {}
        waves = np.zeros(len(customers), np.int64)
        for i, (c, t) in enumerate(zip(customers, terminals)):
            w = max(last_c.get(c, -1), last_t.get(t, -1)) + 1
            waves[i] = w
            last_c[c] = w
            last_t[t] = w
        return waves

    def update_columns(self, cols: TxColumns) -> None:
        """Append the batch to the rings (rows in order; repeated keys are written in successive waves)."""
        c_idx = self.customers.lookup(cols.customer_id, create=True)
        t_idx = self.terminals.lookup(cols.terminal_id, create=True)
        tx_h = np.fromiter((id_hash(str(x)) for x in cols.transaction_id), np.int64, len(cols))
        c_h = self.customers.bucket_of(cols.customer_id, c_idx)
        t_h = self.terminals.bucket_of(cols.terminal_id, t_idx)
        labels = np.full(len(cols), -1, np.int8)
        for i, h in enumerate(tx_h.tolist()):
            self._where[h] = (int(c_idx[i]), int(t_idx[i]), float(cols.ts[i]))
        if len(self._where) > self.max_tracked_ids:  # oldest first: dicts keep insertion order
            for h in list(self._where)[: len(self._where) - self.max_tracked_ids]:
                del self._where[h]
        # write in waves so each ring gets at most one event per key per scatter
        waves = self._waves(cols.customer_id, cols.terminal_id)
        for w in range(int(waves.max(initial=-1)) + 1):
            sel = waves == w
            self.customers.write(c_idx[sel], cols.ts[sel], cols.amount[sel], t_h[sel], tx_h[sel], labels[sel])
            self.terminals.write(t_idx[sel], cols.ts[sel], cols.amount[sel], c_h[sel], tx_h[sel], labels[sel])
            self.customers.count_day(c_idx[sel], cols.ts[sel], cols.amount[sel])
            self.terminals.count_day(t_idx[sel], cols.ts[sel], cols.amount[sel])
        if self.pending:
            hs, ws, fs = [], [], []
            for h in tx_h.tolist():
                fraud = self.pending.pop(h, None)
                if fraud is not None and h in self._where:
                    hs.append(h); ws.append(self._where[h]); fs.append(fraud)
            if hs:
                self._label_known(np.array(hs, np.int64), ws, np.array(fs, bool))

    def context_columns(self, cols: TxColumns) -> FraudContext:
        B, N, M = len(cols), self.customer_history, self.terminal_history
        ts = np.asarray(cols.ts, np.float64)
        amount = np.asarray(cols.amount, np.float64)
        c_idx = self.customers.lookup(cols.customer_id, create=False)
        t_idx = self.terminals.lookup(cols.terminal_id, create=False)
        c_h = self.customers.bucket_of(cols.customer_id, c_idx)
        t_h = self.terminals.bucket_of(cols.terminal_id, t_idx)

        parts = []
        for rings, idx, same in ((self.customers, c_idx, t_h), (self.terminals, t_idx, c_h)):
            rows, slots = rings.ordered(idx)
            r = rows[:, None]
            ev_t = rings.time[r, slots]
            valid = ~np.isnan(ev_t) & (idx >= 0)[:, None] & (ev_t <= ts[:, None])
            ev_t = np.where(valid, ev_t, ts[:, None])
            ev_amount = np.where(valid, rings.amount[r, slots], 0.0)
            ev_gap = np.where(valid, rings.gap[r, slots], -1.0)
            ev_cp = rings.counterpart[r, slots]
            raw_label = rings.label[r, slots]
            visible = ts[:, None] >= ev_t + self.delay_s
            label = np.where(~valid, LABEL_EMPTY, np.where(~visible | (raw_label < 0), LABEL_UNKNOWN,
                                                           np.where(raw_label == 1, LABEL_FRAUD, LABEL_LEGIT)))
            age = np.maximum(ts[:, None] - ev_t, 0.0)
            fr_t = rings.fraud_time[rows]
            fr_vis = (idx >= 0)[:, None] & ~np.isnan(fr_t) & (fr_t + self.delay_s <= ts[:, None]) & \
                (fr_t >= ts[:, None] - FRAUD_WINDOW_DAYS * DAY)
            n_fr = fr_vis.sum(1)
            last_fr = np.where(fr_vis, fr_t, -np.inf).max(1)
            days_since = np.where(n_fr > 0, (ts - last_fr) / DAY, FRAUD_WINDOW_DAYS)
            parts.append(dict(valid=valid, t=ev_t, amount=ev_amount, gap=ev_gap, cp=ev_cp, same=(ev_cp == same[:, None]) & valid,
                              label=label, age=age, n_fr=n_fr, days_since=days_since,
                              last=np.where(idx >= 0, self_or_nan(rings.last_time, idx), np.nan),
                              n_valid=valid.sum(1)))
        cat = {k: np.concatenate([parts[0][k], parts[1][k]], axis=1) for k in
               ("valid", "t", "amount", "gap", "cp", "same", "label", "age")}
        hour, wd = _hour_weekday(cat["t"])
        a = cat["amount"]
        hist_num = np.stack([
            np.log1p(a) / 5.0, np.minimum(a, 5000.0) / 100.0,
            np.where(cat["gap"] < 0, -1.0, np.log1p(np.maximum(cat["gap"], 0.0)) / 12.0), np.log1p(cat["age"]) / 12.0,
            np.sin(hour), np.cos(hour), np.sin(wd), np.cos(wd),
            cat["same"].astype(np.float64), np.log1p(a) - np.log1p(amount)[:, None],
        ], axis=-1)
        hist_num *= cat["valid"][..., None]
        hour_c, wd_c = _hour_weekday(ts)
        pc, pt = parts
        c_mean = np.where(pc["n_valid"] > 0, (pc["amount"] * pc["valid"]).sum(1) / np.maximum(pc["n_valid"], 1), amount)

        def log_gap(last):
            return np.where(np.isnan(last), -1.0, np.log1p(np.maximum(ts - np.nan_to_num(last), 0.0)) / 12.0)

        c_rows, t_rows = np.maximum(c_idx, 0), np.maximum(t_idx, 0)
        delay_days = float(np.ceil(self.labels_delay_days))
        agg = []
        cust = [self.customers.windows(c_rows, c_idx >= 0, ts, 0, w) for w in WINDOWS]
        agg += [np.log1p(n) / 3.0 for n, _, _ in cust]
        agg += [np.log1p(a / np.maximum(n, 1)) / 5.0 for n, a, _ in cust]
        term = [self.terminals.windows(t_rows, t_idx >= 0, ts, delay_days, w) for w in WINDOWS]
        agg += [np.log1p(n) / 3.0 for n, _, _ in term]
        agg += [np.where(n > 0, f / np.maximum(n, 1), 0.0) for n, _, f in term]
        cur_num = np.stack([
            np.log1p(amount) / 5.0, np.minimum(amount, 5000.0) / 100.0,
            np.sin(hour_c), np.cos(hour_c), np.sin(wd_c), np.cos(wd_c),
            log_gap(pc["last"]), log_gap(pt["last"]), pc["n_valid"] / max(N, 1), pt["n_valid"] / max(M, 1),
            np.log1p(amount) - np.log1p(c_mean),
            np.minimum(pc["n_fr"], 8) / 4.0, np.log1p(pc["days_since"]) / 4.0,
            np.minimum(pt["n_fr"], 8) / 4.0, np.log1p(pt["days_since"]) / 4.0,
            *agg,
        ], axis=-1)
        return FraudContext(
            hist_num=hist_num.astype(np.float32), hist_label=cat["label"].astype(np.int64),
            hist_counterpart=np.where(cat["valid"], cat["cp"], 0).astype(np.int64),
            cur_num=cur_num.astype(np.float32), cur_ids=np.stack([c_h, t_h], 1).astype(np.int64),
            hist_amount=a.astype(np.float32), hist_age_s=cat["age"].astype(np.float32),
        )

    # -- snapshot / restore ----------------------------------------------------------------------
    def snapshot(self, customers: Iterable[str] | None = None, terminals: Iterable[str] | None = None) -> bytes:
        """Serialise the whole state, or only some keys (a consumer's partitions). `restore` merges it back."""
        c_names, c_arr = self.customers.export(None if customers is None else list(customers))
        t_names, t_arr = self.terminals.export(None if terminals is None else list(terminals))
        c_set = None if customers is None else set(c_names)
        t_set = None if terminals is None else set(t_names)
        where = [(h, self.customers.names[c], self.terminals.names[t], et) for h, (c, t, et) in self._where.items()
                 if (c_set is None or self.customers.names[c] in c_set) and (t_set is None or self.terminals.names[t] in t_set)]
        header = dict(version=SNAPSHOT_VERSION, customer_history=self.customer_history,
                      terminal_history=self.terminal_history, labels_delay_days=self.labels_delay_days,
                      fraud_memory=self.fraud_memory, customers=c_names, terminals=t_names,
                      where_customers=[w[1] for w in where], where_terminals=[w[2] for w in where])
        arrays = {f"c_{k}": v for k, v in c_arr.items()} | {f"t_{k}": v for k, v in t_arr.items()}
        arrays["where_hash"] = np.array([w[0] for w in where], np.int64)
        arrays["where_time"] = np.array([w[3] for w in where], np.float64)
        arrays["pending_hash"] = np.array(list(self.pending), np.int64)
        arrays["pending_fraud"] = np.array(list(self.pending.values()), bool)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def restore(self, blob: bytes) -> "FraudState":
        """Merge a snapshot into this state (keys in the snapshot overwrite ours). Returns self."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        header = json.loads(data.pop("header").tobytes())
        if header.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"fraud state snapshot version {header.get('version')} != {SNAPSHOT_VERSION}")
        shape = (header["customer_history"], header["terminal_history"], header["fraud_memory"])
        if shape != (self.customer_history, self.terminal_history, self.fraud_memory):
            raise ValueError(f"snapshot history lengths {shape} do not match this state's "
                             f"{(self.customer_history, self.terminal_history, self.fraud_memory)}")
        self.customers.merge(header["customers"], {k[2:]: v for k, v in data.items() if k.startswith("c_")})
        self.terminals.merge(header["terminals"], {k[2:]: v for k, v in data.items() if k.startswith("t_")})
        c_rows = self.customers.lookup(header["where_customers"], create=True)
        t_rows = self.terminals.lookup(header["where_terminals"], create=True)
        for h, c, t, et in zip(data["where_hash"].tolist(), c_rows.tolist(), t_rows.tolist(), data["where_time"].tolist()):
            self._where[h] = (c, t, et)
        self.pending.update(zip(data["pending_hash"].tolist(), data["pending_fraud"].tolist()))
        return self

    @classmethod
    def from_snapshot(cls, blob: bytes) -> "FraudState":
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes())
        state = cls(header["customer_history"], header["terminal_history"], header["labels_delay_days"],
                    header["fraud_memory"])
        return state.restore(blob)

    def customer_keys(self) -> list[str]:
        return list(self.customers.names)

    def terminal_keys(self) -> list[str]:
        return list(self.terminals.names)


def self_or_nan(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return arr[np.maximum(idx, 0)]


def _hour_weekday(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day and weekday (Monday = 0) as angles, UTC."""
    hour = (ts % DAY) / 3600.0
    weekday = (np.floor(ts / DAY) + 3) % 7  # 1970-01-01 was a Thursday
    return hour * (2 * np.pi / 24), weekday * (2 * np.pi / 7)
