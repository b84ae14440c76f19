"""FraudState bounds: idle-key eviction, the bounded label index + located labels, the pending horizon.

Everything the state answers must depend only on the record order: not on batch boundaries, sweep
times, index size or a snapshot/restore in the middle. Unit tests pin each rule; the hypothesis
properties drive random streams (random ids, out-of-order and extreme timestamps, duplicate labels,
labels for unknown ids) through differently configured states and compare what they answer.
"""

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.fraud_state import (CURRENT_FIELDS, DAY, FRAUD_WINDOW_DAYS, LABEL_FRAUD, WINDOWS, ExpiredLabel,
                                FraudState, LabelStatus, TxColumns)

T0 = 1.52e9


def cols_of(rows):
    """rows: (transaction_id, ts, customer, terminal, amount)."""
    return TxColumns([r[0] for r in rows], np.array([r[1] for r in rows], np.float64), [r[2] for r in rows],
                     [r[3] for r in rows], np.array([r[4] for r in rows], np.float64))


def churn_stream(days, per_day=300, seed=0, prefix="x"):
    """Traffic where customers and terminals come and go: each day draws from a pool that drifts."""
    rng = np.random.default_rng(seed)
    out = []
    for d in range(days):
        ts = T0 + d * DAY + np.sort(rng.uniform(0, DAY, per_day))
        c = rng.integers(0, 150, per_day) + 40 * d  # a new slice of customers every day
        t = rng.integers(0, 60, per_day) + 15 * d
        out.append(TxColumns([f"{prefix}{d}_{i}" for i in range(per_day)], ts, [f"c{x}" for x in c],
                             [f"t{x}" for x in t], rng.gamma(2, 30, per_day)))
    return out


def probe(state, at, customers, terminals):
    n = max(len(customers), len(terminals))
    cs = [customers[i % len(customers)] for i in range(n)]
    ts = [terminals[i % len(terminals)] for i in range(n)]
    return state.context_columns(TxColumns([f"probe{i}" for i in range(n)], np.full(n, at), cs, ts, np.full(n, 42.0)))


def assert_ctx_equal(a, b):
    for f in a.__dataclass_fields__:
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-6, atol=1e-6, err_msg=f)


# -- eviction ----------------------------------------------------------------------------------------

def test_default_idle_horizon_covers_windows_delay_and_fraud_window():
    for delay in (0.0, 7.0, 10.5):
        s = FraudState(labels_delay_days=delay)
        assert s.idle_evict_days >= max(WINDOWS) + delay and s.idle_evict_days >= FRAUD_WINDOW_DAYS


def test_idle_key_reads_as_a_stranger_then_starts_again():
    s = FraudState(customer_history=3, terminal_history=3, idle_evict_days=10, labels_delay_days=1)
    s.advance_columns(cols_of([(f"a{i}", T0 + i * 3600, "c1", f"t{i}", 10.0) for i in range(3)]))
    s.apply_label_columns(["a0"], [True])
    n = s.customer_history
    # 9 days later c1 still has its history and its known fraud
    ctx = probe(s, T0 + 9 * DAY, ["c1"], ["T"])
    assert (ctx.hist_amount[0, :n] == 10.0).all()
    assert ctx.cur_num[0, CURRENT_FIELDS.index("customer_known_frauds")] > 0
    # the clock moves past c1's idle horizon (another customer's event): c1 now reads like a stranger
    s.advance_columns(cols_of([("b0", T0 + 11 * DAY, "other", "T", 5.0)]))
    idle, stranger = probe(s, T0 + 11 * DAY, ["c1"], ["T"]), probe(s, T0 + 11 * DAY, ["never-seen"], ["T"])
    np.testing.assert_array_equal(idle.hist_num[:, :n], stranger.hist_num[:, :n])
    np.testing.assert_array_equal(idle.hist_label, stranger.hist_label)
    np.testing.assert_array_equal(idle.cur_num, stranger.cur_num)
    assert "c1" not in s.customer_keys() and "c1" not in s.customers.index  # the sweep freed its row
    # seen again: a fresh history of one event
    after = s.advance_columns(cols_of([("b1", T0 + 12 * DAY, "c1", "T", 7.0), ("b2", T0 + 12 * DAY + 60, "c1", "T", 8.0)]))
    assert after.hist_amount[1, :n].tolist() == [0.0, 0.0, 7.0]


def test_eviction_does_not_depend_on_batching_or_sweep_times():
    days = churn_stream(14, per_day=120)
    rows = [(d.transaction_id[i], d.ts[i], d.customer_id[i], d.terminal_id[i], d.amount[i]) for d in days
            for i in range(len(d))]
    ctxs = {}
    for name, batch, sweep in (("whole-days", None, 1.0), ("37", 37, 0.01), ("300", 300, 50.0)):
        s = FraudState(idle_evict_days=3, sweep_every_days=sweep)
        parts = []
        if batch is None:
            parts = [s.advance_columns(d) for d in days]
        else:
            for i in range(0, len(rows), batch):
                parts.append(s.advance_columns(cols_of(rows[i:i + batch])))
        ctxs[name] = np.concatenate([p.cur_num for p in parts]), np.concatenate([p.hist_num for p in parts])
    for name in ("37", "300"):
        np.testing.assert_allclose(ctxs[name][0], ctxs["whole-days"][0], atol=1e-6)
        np.testing.assert_allclose(ctxs[name][1], ctxs["whole-days"][1], atol=1e-6)


def test_memory_and_snapshot_plateau_with_eviction_and_grow_without():
    sizes = {"evict": [], "keep": []}
    states = {"evict": FraudState(idle_evict_days=5), "keep": FraudState(idle_evict_days=math.inf)}
    for d, day in enumerate(churn_stream(36, per_day=250)):
        for name, s in states.items():
            s.advance_columns(day)
            s.apply_label_columns(day.transaction_id, np.arange(len(day)) % 29 == 0)
            if d in (15, 35):
                sizes[name].append((len(s.customer_keys()) + len(s.terminal_keys()), s.memory_bytes(), len(s.snapshot())))
    (k15, m15, b15), (k35, m35, b35) = sizes["evict"]
    assert k35 <= 1.1 * k15 and m35 <= 1.1 * m15 and b35 <= 1.2 * b15  # plateau
    (K15, M15, B15), (K35, M35, B35) = sizes["keep"]
    assert K35 > 1.8 * K15 and M35 > 1.3 * M15 and B35 > 1.8 * B15  # grows with every key ever seen
    assert b35 * 3 < B35


def test_compaction_after_mass_eviction_keeps_answers():
    s = FraudState(idle_evict_days=2)
    rng = np.random.default_rng(1)
    n = 6000
    s.advance_columns(TxColumns([f"m{i}" for i in range(n)], T0 + np.sort(rng.uniform(0, 3600, n)),
                                [f"c{i}" for i in range(n)], [f"t{i % 50}" for i in range(n)], np.full(n, 5.0)))
    big = s.customers.capacity
    s.advance_columns(cols_of([("k0", T0 + 1.5 * DAY, "keep", "t1", 9.0)]))
    before = probe(s, T0 + 1.6 * DAY, ["keep", "c3"], ["t1"])
    s.advance_columns(cols_of([("k1", T0 + 2.6 * DAY, "z", "tz", 9.0)]))  # c0..c5999 go idle: swept, compacted
    assert s.customers.capacity < big / 2 and len(s.customers) == 2
    after = probe(s, T0 + 1.6 * DAY, ["keep"], ["t1"])
    np.testing.assert_array_equal(after.hist_num[0, :s.customer_history], before.hist_num[0, :s.customer_history])


def test_restore_mid_stream_with_eviction_gives_the_same_scores():
    from models.fraud_scorer import FraudModel, FraudModelConfig, FraudScorer
    import torch

    torch.manual_seed(0)
    scorer = FraudScorer(FraudModel(FraudModelConfig.from_preset("tiny")), "tiny-bounds")
    days = churn_stream(16, per_day=150, seed=3)
    a = scorer.new_state(idle_evict_days=4, pending_horizon_days=1, max_tracked_ids=500)
    assert (a.idle_evict_days, a.pending_horizon_days, a.max_tracked_ids) == (4, 1, 500)
    b = None
    for d, day in enumerate(days):
        if d == 9:
            b = FraudState.from_snapshot(a.snapshot())
            assert b.idle_evict_days == 4 and b.max_tracked_ids == 500
        outs = [scorer.probabilities(st_.advance_columns(day)) for st_ in ((a,) if b is None else (a, b))]
        if b is not None:
            np.testing.assert_array_equal(outs[0], outs[1])
        for st_ in (a,) if b is None else (a, b):
            st_.apply_label_columns(day.transaction_id[::3], np.arange(len(day))[::3] % 7 == 0)
    assert b is not None and len(b.customers) < 150 * 16


# -- label index and located labels -------------------------------------------------------------------

def test_statuses_applied_pending_duplicate_and_old_bool_meaning():
    s = FraudState()
    s.advance_columns(cols_of([("a", T0, "c", "t", 1.0)]))
    out = s.apply_label_columns(["a", "a", "later", "later"], [True, True, False, False], refs=["p1", "p2", "p3", "p4"])
    assert out == [LabelStatus.APPLIED, LabelStatus.DUPLICATE, LabelStatus.PENDING, LabelStatus.DUPLICATE]
    assert out[0] == True and out[2] == False  # noqa: E712  (the old list[bool] still compares)
    assert s.pending[next(iter(s.pending))][:3] == ("later", False, "p3")


def test_locate_callback_and_park_false():
    s = FraudState(max_tracked_ids=1)
    s.advance_columns(cols_of([("old", T0, "c", "T", 5.0), ("new", T0 + 60, "c2", "T", 5.0)]))  # "old" left the index
    asked = []

    def locate(ids):
        asked.append(list(ids))
        return [("c", "T", T0) if i == "old" else None for i in ids]

    out = s.apply_label_columns(["new", "old", "nowhere"], [True, True, False], refs=["r0", "r1", "r2"], locate=locate)
    assert out == [LabelStatus.APPLIED, LabelStatus.APPLIED, LabelStatus.PENDING] and asked == [["old", "nowhere"]]
    ctx = probe(s, T0 + 8 * DAY, ["c"], ["T"])
    assert ctx.cur_num[0, CURRENT_FIELDS.index("terminal_known_frauds")] == pytest.approx(2 / 4)
    assert s.apply_label_columns(["ghost"], [True], park=False) == [LabelStatus.UNINDEXED] and len(s.pending) == 1
    assert s.park_labels(["ghost", "ghost"], [True, True], ["r3", "r4"]) == [LabelStatus.PENDING, LabelStatus.DUPLICATE]


def test_fraud_memory_keeps_the_latest_frauds_whatever_the_label_order():
    rows = [(f"f{i}", T0 + i * 3600, "c", f"t{i}", 5.0) for i in range(5)]
    a, b = FraudState(fraud_memory=2, labels_delay_days=0), FraudState(fraud_memory=2, labels_delay_days=0)
    for s in (a, b):
        s.advance_columns(cols_of(rows))
    a.apply_label_columns([r[0] for r in rows], [True] * 5)
    for r in reversed(rows):
        b.apply_label_columns([r[0]], [True])
    for s in (a, b):
        j = s.customers.index["c"]
        assert sorted(s.customers.fraud_time[j] - T0) == [3 * 3600, 4 * 3600]


def located_vs_indexed(days, delay_days=8):
    """A: a large index; B: no index (every label goes through the store lookup + apply_located_labels)."""
    store = {}
    a, b = FraudState(max_tracked_ids=10**6, labels_delay_days=7), FraudState(max_tracked_ids=0, labels_delay_days=7)
    lag = []
    for d, day in enumerate(days):
        for s in (a, b):
            s.advance_columns(day)
        for i in range(len(day)):
            store[day.transaction_id[i]] = (day.customer_id[i], day.terminal_id[i], day.ts[i])
        lag.append(day)
        if len(lag) > delay_days:  # chargebacks of the transactions of `delay_days` ago (some twice)
            old = lag.pop(0)
            ids = list(old.transaction_id[::2]) + list(old.transaction_id[:6]) + ["never-seen"]
            fraud = np.array([hash(t) % 5 == 0 for t in ids])
            for s in (a, b):
                st_ = s.apply_label_columns(ids, fraud)
                miss = [i for i, x in enumerate(st_) if x == LabelStatus.PENDING and ids[i] in store]
                if miss:
                    loc = [store[ids[i]] for i in miss]
                    s.apply_located_labels([ids[i] for i in miss], [x[0] for x in loc], [x[1] for x in loc],
                                           [x[2] for x in loc], fraud[miss])
    return a, b


def test_located_labels_equal_indexed_labels():
    days = churn_stream(20, per_day=200, seed=5)
    a, b = located_vs_indexed(days)
    assert len(b) == 0 and len(a) > 0
    customers = sorted(set(days[-1].customer_id) | set(days[-9].customer_id))
    terminals = sorted(set(days[-1].terminal_id) | set(days[-9].terminal_id))
    for at in (a.clock + 3600, a.clock + 8 * DAY):
        pa, pb = probe(a, at, customers, terminals), probe(b, at, customers, terminals)
        assert_ctx_equal(pa, pb)
    assert (pa.hist_label == LABEL_FRAUD).any()  # labels did reach the rings
    assert a.pending.keys() == b.pending.keys() == {id_of("never-seen")}
    for x, y in ((a.customers, b.customers), (a.terminals, b.terminals)):
        for k in x.index:
            i, j = x.index[k], y.index[k]
            for arr in ("label", "fraud_count", "day_fraud"):
                np.testing.assert_array_equal(getattr(x, arr)[i], getattr(y, arr)[j], err_msg=arr)
            np.testing.assert_array_equal(np.sort(x.fraud_time[i]), np.sort(y.fraud_time[j]))


def id_of(t):
    from models.fraud_state import id_hash

    return id_hash(t)


def test_late_label_outside_the_index_still_counts_once():
    s = FraudState(customer_history=2, terminal_history=2, labels_delay_days=7, max_tracked_ids=3)
    s.advance_columns(cols_of([("f", T0, "c", "T", 50.0)]))
    s.advance_columns(cols_of([(f"n{i}", T0 + 3600 * (i + 1), f"o{i}", f"u{i}", 5.0) for i in range(10)]))
    s.advance_columns(cols_of([(f"m{i}", T0 + 7200 * (i + 1), "c", "T", 5.0) for i in range(4)]))  # f leaves the rings
    assert s.apply_label_columns(["f"], [True]) == [LabelStatus.PENDING]  # not indexed any more
    assert s.apply_located_labels(["f"], ["c"], ["T"], [T0], [True]) == [LabelStatus.APPLIED]
    assert not s.pending
    s.apply_located_labels(["f"], ["c"], ["T"], [T0], [True])  # a duplicate chargeback
    ctx = probe(s, T0 + 8 * DAY, ["c"], ["T"])
    assert ctx.cur_num[0, CURRENT_FIELDS.index("customer_known_frauds")] == pytest.approx(1 / 4)
    assert ctx.cur_num[0, CURRENT_FIELDS.index("terminal_known_frauds")] == pytest.approx(1 / 4)
    assert s.apply_located_labels(["g"], ["nobody"], ["nowhere"], [T0], [True]) == [LabelStatus.UNKNOWN]


def test_index_is_bounded_by_count_and_event_time():
    s = FraudState(max_tracked_ids=50, max_tracked_days=1.0)
    for d in range(3):
        s.advance_columns(cols_of([(f"d{d}_{i}", T0 + d * DAY + i, f"c{i}", "t", 1.0) for i in range(40)]))
        assert len(s) <= 50
    assert all(w[3] >= s.clock - DAY for w in s._where.values())
    assert s.apply_label_columns(["d0_0", "d2_39"], [True, True]) == [LabelStatus.PENDING, LabelStatus.APPLIED]


# -- pending horizon ----------------------------------------------------------------------------------

def test_pending_expires_after_its_horizon_in_event_time_with_id_and_ref():
    s = FraudState(pending_horizon_days=2)
    s.advance_columns(cols_of([("a", T0, "c", "t", 1.0)]))
    assert s.apply_label_columns(["early", "late"], [True, False], refs=["labels:0@7", "labels:0@8"]) == \
        [LabelStatus.PENDING] * 2
    s.advance_columns(cols_of([("early", T0 + DAY, "c", "t", 1.0)]))  # within the horizon: applied
    assert s.expire_pending() == [] and list(s.pending.values())[0][0] == "late"
    s.advance_columns(cols_of([("b", T0 + 2.5 * DAY, "c", "t", 1.0)]))
    s.advance_columns(cols_of([("late", T0 + 2.6 * DAY, "c", "t", 1.0)]))  # too late: not applied
    ctx = probe(s, T0 + 30 * DAY, ["c"], ["t"])
    assert (ctx.hist_label[0, :s.customer_history] != 2).all()  # "late" (legit) never reached the ring
    assert s.expire_pending() == [ExpiredLabel("late", False, "labels:0@8", "horizon", T0)]
    assert not s.pending and s.expire_pending() == []


def test_pending_count_cap_overflows_oldest_first():
    s = FraudState(max_pending=3)
    s.apply_label_columns([f"p{i}" for i in range(5)], [True] * 5, refs=list(range(5)))
    assert len(s.pending) == 3
    out = s.expire_pending()
    assert [(e.transaction_id, e.ref, e.reason) for e in out] == [("p0", 0, "overflow"), ("p1", 1, "overflow")]


def test_label_before_any_event_waits_from_the_first_event():
    s = FraudState(pending_horizon_days=1)
    s.apply_label_columns(["x"], [True])
    s.advance_columns(cols_of([("a", T0, "c", "t", 1.0)]))
    s.advance_columns(cols_of([("x", T0 + 0.5 * DAY, "c", "t", 1.0)]))
    assert not s.pending and s.expire_pending() == []


# -- snapshots ----------------------------------------------------------------------------------------

def test_snapshot_carries_pending_outbox_index_and_clock():
    s = FraudState(max_pending=2, idle_evict_days=9)
    s.advance_columns(cols_of([("a", T0, "c", "t", 1.0)]))
    s.apply_label_columns(["p0", "p1", "p2"], [True, False, True], refs=["r0", "r1", "r2"])
    r = FraudState.from_snapshot(s.snapshot())
    assert r.clock == s.clock and r.pending == s.pending and r._where == s._where and r.idle_evict_days == 9
    assert r.expire_pending() == s.expire_pending() == [ExpiredLabel("p0", True, "r0", "overflow", T0)]


def v1_blob(state):
    """A version-1 snapshot as the previous code wrote it (no clock, no fraud txids, pending by hash only)."""
    import io

    with np.load(io.BytesIO(state.snapshot()), allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(data.pop("header").tobytes())
    header = {k: header[k] for k in ("customer_history", "terminal_history", "labels_delay_days", "fraud_memory",
                                     "customers", "terminals", "where_customers", "where_terminals")} | {"version": 1}
    data = {k: v for k, v in data.items() if k not in ("c_fraud_txid", "t_fraud_txid", "where_at", "pending_at")}
    data["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    return buf.getvalue()


def test_reads_version_1_snapshots_and_rejects_unknown_versions():
    s = FraudState()
    days = churn_stream(3, per_day=100, seed=9)
    for d in days[:2]:
        s.advance_columns(d)
    s.apply_label_columns(days[1].transaction_id[:50] + ["future"], np.arange(51) % 3 == 0)
    old = FraudState.from_snapshot(v1_blob(s))
    assert old.idle_evict_days == math.inf and old.clock == s.clock
    assert_ctx_equal(old.context_columns(days[2]), s.context_columns(days[2]))
    assert [v[1] for v in old.pending.values()] == [v[1] for v in s.pending.values()]
    assert old.apply_label_columns(days[1].transaction_id[60:65], np.ones(5)) == [LabelStatus.APPLIED] * 5
    import io

    with np.load(io.BytesIO(s.snapshot()), allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(data.pop("header").tobytes()) | {"version": 99}
    data["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    with pytest.raises(ValueError, match="version 99"):
        FraudState().restore(buf.getvalue())


# -- properties ---------------------------------------------------------------------------------------

CUSTOMERS, TERMINALS = [f"c{i}" for i in range(6)], [f"t{i}" for i in range(4)]
_ts = st.one_of(st.floats(0, 40 * DAY), st.floats(-3 * DAY, 0), st.sampled_from([-1e6, 120 * DAY, 0.0]))
_tx = st.tuples(st.sampled_from(CUSTOMERS), st.sampled_from(TERMINALS), _ts, st.floats(0, 5000))
_op = st.one_of(
    st.tuples(st.just("tx"), st.lists(_tx, min_size=1, max_size=12)),
    # labels: by index into the transactions generated so far (mod), or for unknown / future ids
    st.tuples(st.just("label"), st.lists(st.tuples(st.one_of(st.integers(0, 10**6), st.sampled_from(["?", "f0", "f1"])),
                                                   st.booleans()), min_size=1, max_size=8)),
)


def run_ops(ops, split_rows=False, snapshot_at=None, located_only=False, **kw):
    """Drive one state through the ops; returns the contexts it produced, its final probes and the dead letters."""
    s = FraudState(customer_history=3, terminal_history=2, labels_delay_days=1, fraud_memory=2,
                   max_tracked_ids=0 if located_only else 10_000, idle_evict_days=3, pending_horizon_days=1,
                   max_pending=4, **kw)
    base = T0 + 0.0
    store: dict[str, tuple[str, str, float]] = {}
    ids: list[str] = []
    ctxs, dead = [], []
    n = 0
    for k, (kind, payload) in enumerate(ops):
        if snapshot_at is not None and k == snapshot_at:
            s = FraudState.from_snapshot(s.snapshot())
        if kind == "tx":
            rows = []
            for c, t, off, amount in payload:
                tid = f"f{n}" if n < 2 else f"x{n}"  # the first two carry ids that early labels ("f0", "f1") name
                rows.append((tid, base + off, c, t, amount))
                store[tid] = (c, t, base + off)
                ids.append(tid)
                n += 1
            batches = [[r] for r in rows] if split_rows else [rows]
            ctxs += [s.advance_columns(cols_of(b)) for b in batches]
        else:
            tids = [ids[x % len(ids)] if isinstance(x, int) and ids else str(x) for x, _ in payload]
            fraud = np.array([f for _, f in payload])
            refs = [f"ref{k}.{i}" for i in range(len(tids))]
            # what the stream job does: ids the index lost are looked up in the store; the rest wait
            status = s.apply_label_columns(tids, fraud, refs=refs, locate=lambda q: [store.get(x) for x in q])
            assert all(x != LabelStatus.UNINDEXED for x in status)
            dead += s.expire_pending()
        assert len(s.pending) <= 4 and len(s) <= (0 if located_only else 10_000)
        assert len(s.customers) <= len(CUSTOMERS) and len(s.terminals) <= len(TERMINALS)
    at = max(s.clock, base) + 3600
    probes = [probe(s, at + d * DAY, CUSTOMERS, TERMINALS) for d in (0, 2)]
    dead += s.expire_pending()
    return s, ctxs, probes, sorted((e.transaction_id, e.ref, e.reason) for e in dead)


def flat(ctxs):
    return np.concatenate([c.cur_num for c in ctxs]) if ctxs else np.zeros((0, len(CURRENT_FIELDS)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=1, max_size=14), st.integers(0, 14))
def test_property_order_only_semantics(ops, cut):
    s, ctxs, probes, dead = run_ops(ops)
    # one row at a time, a restart in the middle, and no index at all (labels located) answer the same
    for other in (run_ops(ops, split_rows=True, sweep_every_days=0.1), run_ops(ops, snapshot_at=cut),
                  run_ops(ops, located_only=True, sweep_every_days=7)):
        np.testing.assert_allclose(flat(other[1]), flat(ctxs), atol=1e-6)
        for p, q in zip(other[2], probes):
            assert_ctx_equal(q, p)
        assert other[3] == dead
    assert np.isfinite(flat(ctxs)).all()
    # far in the future, everything is idle: the state and its snapshot shrink to the live keys
    s.advance_columns(cols_of([("end", max(s.clock, T0) + 400 * DAY, "cz", "tz", 1.0)]))
    assert len(s.customers) == 1 and len(s.terminals) == 1
    assert len(s.snapshot()) < 20_000
