"""FraudState: histories, label delay, out-of-order events, snapshot/restore and key splits."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from models.fraud_state import (CURRENT_FIELDS, HIST_FIELDS, LABEL_EMPTY, LABEL_FRAUD, LABEL_LEGIT, LABEL_UNKNOWN,
                                FraudState, TxColumns)
from pipelines.contracts import Label, Transaction

T0 = datetime(2018, 4, 1, tzinfo=timezone.utc)


def tx(i, customer="c1", terminal="t1", amount=10.0, at=None):
    return Transaction(transaction_id=f"tx{i}", timestamp=at or T0 + timedelta(hours=i), customer_id=customer,
                       terminal_id=terminal, amount=amount)


def label(i, fraud=True):
    return Label(transaction_id=f"tx{i}", is_fraud=fraud, reported_at=T0)


def random_columns(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return TxColumns([f"r{i}" for i in range(n)], 1.52e9 + np.sort(rng.uniform(0, 20 * 86400, n)),
                     [f"c{x}" for x in rng.integers(0, 60, n)], [f"t{x}" for x in rng.integers(0, 90, n)],
                     rng.gamma(2, 30, n))


def assert_ctx_equal(a, b):
    for f in a.__dataclass_fields__:
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-6, atol=1e-6, err_msg=f)


def test_no_history_gives_empty_slots_and_shapes():
    st = FraudState(customer_history=4, terminal_history=3)
    ctx = st.context_batch([tx(0)])
    assert ctx.hist_num.shape == (1, 7, len(HIST_FIELDS))
    assert ctx.cur_num.shape == (1, len(CURRENT_FIELDS))
    assert (ctx.hist_label == LABEL_EMPTY).all()
    assert np.isfinite(ctx.hist_num).all() and np.isfinite(ctx.cur_num).all()


def test_history_is_last_n_events_oldest_first():
    st = FraudState(customer_history=3, terminal_history=2)
    st.update_batch([tx(i, amount=float(i + 1), terminal=f"t{i}") for i in range(5)])
    ctx = st.context_batch([tx(9, terminal="t4")])
    assert ctx.hist_amount[0, :3].tolist() == [3.0, 4.0, 5.0]  # customer: last 3, oldest first
    assert ctx.hist_amount[0, 3:].tolist() == [0.0, 5.0]  # terminal t4 saw one event (right-aligned)
    assert ctx.hist_label[0, 3] == LABEL_EMPTY and ctx.hist_label[0, 4] == LABEL_UNKNOWN


def test_label_visible_only_after_delay():
    st = FraudState(customer_history=3, terminal_history=3, labels_delay_days=7)
    st.update_batch([tx(0)])
    assert st.apply_label(label(0, fraud=True)) is True
    early = st.context_batch([tx(1, at=T0 + timedelta(days=6, hours=23))])
    late = st.context_batch([tx(2, at=T0 + timedelta(days=7, hours=1))])
    assert early.hist_label[0, 2] == LABEL_UNKNOWN
    assert late.hist_label[0, 2] == LABEL_FRAUD
    i = CURRENT_FIELDS.index("terminal_known_frauds")
    assert early.cur_num[0, i] == 0 and late.cur_num[0, i] > 0


def test_label_before_transaction_waits_in_pending():
    st = FraudState(labels_delay_days=1)
    assert st.apply_label(label(0, fraud=False)) is False
    assert len(st.pending) == 1
    st.update_batch([tx(0)])
    assert not st.pending
    ctx = st.context_batch([tx(1, at=T0 + timedelta(days=2))])
    assert ctx.hist_label[0, st.customer_history - 1] == LABEL_LEGIT


def test_out_of_order_event_is_not_history_of_an_earlier_one():
    st = FraudState(customer_history=2, terminal_history=2)
    st.update_batch([tx(5, amount=50.0)])  # 05:00 arrives first
    ctx = st.advance_batch([tx(1, amount=10.0)])  # 01:00 arrives late: 05:00 is in its future
    assert (ctx.hist_label[0] == LABEL_EMPTY).all()
    later = st.context_batch([tx(8)])
    assert later.hist_amount[0, :2].tolist() == [50.0, 10.0]  # arrival order kept
    gap = HIST_FIELDS.index("log_gap")
    assert later.hist_num[0, 1, gap] == 0.0  # the late event's gap is clipped at 0, not negative


def test_batch_advance_equals_one_by_one():
    cols = random_columns(600)
    a, b = FraudState(), FraudState()
    batched = a.advance_columns(cols)
    singles = [b.advance_columns(cols.take(np.array([i]))) for i in range(len(cols))]
    from models.fraud_state import FraudContext

    assert_ctx_equal(batched, FraudContext.concat(singles))


def test_snapshot_restore_roundtrip():
    cols = random_columns()
    st = FraudState()
    st.advance_columns(cols.take(np.arange(2000)))
    st.apply_label_columns(cols.transaction_id[:1500], np.arange(1500) % 17 == 0)
    st.apply_label(Label(transaction_id="future", is_fraud=True, reported_at=T0))
    copy = FraudState.from_snapshot(st.snapshot())
    rest = cols.take(np.arange(2000, 3000))
    assert_ctx_equal(st.context_columns(rest), copy.context_columns(rest))
    assert copy.pending == st.pending
    # labels still find their transactions after a restore
    assert copy.apply_label_columns(cols.transaction_id[1500:1510], np.ones(10)) == [True] * 10


def test_split_by_key_and_merge():
    cols = random_columns()
    st = FraudState()
    st.advance_columns(cols.take(np.arange(2000)))
    customers = st.customer_keys()
    mine, theirs = customers[::2], customers[1::2]
    part_a = FraudState().restore(st.snapshot(customers=mine))
    assert set(part_a.customer_keys()) == set(mine)
    merged = FraudState().restore(st.snapshot(customers=mine)).restore(st.snapshot(customers=theirs))
    rest = cols.take(np.arange(2000, 3000))
    assert_ctx_equal(st.context_columns(rest), merged.context_columns(rest))
    # a consumer that owns only `mine` sees the same customer history as the full state for its keys
    own = np.array([i for i, c in enumerate(rest.customer_id) if c in set(mine)])
    n = st.customer_history
    np.testing.assert_allclose(st.context_columns(rest.take(own)).hist_num[:, :n],
                               part_a.context_columns(rest.take(own)).hist_num[:, :n], atol=1e-6)


def test_restore_rejects_other_history_lengths():
    blob = FraudState(customer_history=4).snapshot()
    with pytest.raises(ValueError, match="history lengths"):
        FraudState(customer_history=5).restore(blob)


def test_duplicate_label_is_idempotent():
    st = FraudState(labels_delay_days=0)
    st.update_batch([tx(0)])
    st.apply_label(label(0))
    st.apply_label(label(0))
    ctx = st.context_batch([tx(1, terminal="t1")])
    i = CURRENT_FIELDS.index("terminal_known_frauds")
    assert ctx.cur_num[0, i] == pytest.approx(1 / 4)  # one fraud, not two


def test_handbook_aggregates_terminal_risk_behind_the_delay():
    st = FraudState(labels_delay_days=7)
    day0 = [tx(i, customer=f"c{i}", terminal="T", amount=20.0, at=T0 + timedelta(hours=i)) for i in range(4)]
    st.update_batch(day0)
    st.apply_labels([label(0, True), label(1, False), label(2, False), label(3, False)])
    risk7 = CURRENT_FIELDS.index("terminal_risk_7d")
    nb7 = CURRENT_FIELDS.index("terminal_nb_tx_7d")
    cnt1 = CURRENT_FIELDS.index("customer_nb_tx_1d")
    same_week = st.context_batch([tx(10, customer="c0", terminal="T", at=T0 + timedelta(days=3))])
    assert same_week.cur_num[0, risk7] == 0 and same_week.cur_num[0, nb7] == 0  # inside the delay: unknown
    later = st.context_batch([tx(11, customer="c0", terminal="T", at=T0 + timedelta(days=8))])
    assert later.cur_num[0, risk7] == pytest.approx(0.25)  # 1 fraud of 4 labelled transactions
    assert later.cur_num[0, nb7] == pytest.approx(np.log1p(4) / 3)
    today = st.context_batch([tx(12, customer="c0", terminal="X", at=T0 + timedelta(hours=20))])
    assert today.cur_num[0, cnt1] == pytest.approx(np.log1p(1) / 3)  # c0's one transaction today
