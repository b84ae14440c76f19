"""The customer's usual amount in the fraud state (models/fraud_spend.py): equal to a plain re-count over
the customer's earlier events, blind to everything after the transaction, the same whatever the batch
boundaries, kept by snapshots, and read by a checkpoint only when its config says so."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.fraud_spend import (MIN_EVENTS, SPEND_FIELDS, SPEND_WINDOW_DAYS, UNUSUAL_RATIO, UNUSUAL_WINDOWS_DAYS,
                                SpendMemory)
from models.fraud_state import DAY, FraudContext, FraudState, TxColumns

T0 = 1.5230e9  # 2018-04-06

# (customer, hours after the previous event, amount): hostile amounts included (0, tiny, huge)
events = st.lists(st.tuples(st.integers(0, 3), st.floats(0, 24 * 12, allow_nan=False),
                            st.one_of(st.floats(0, 1e9, allow_nan=False), st.sampled_from([0.0, 0.01, 20.0, 100.0]))),
                  min_size=1, max_size=90)


def columns(evs) -> TxColumns:
    ts = T0 + np.cumsum([h * 3600.0 for _, h, _ in evs])
    return TxColumns([f"x{i}" for i in range(len(evs))], ts, [f"c{c}" for c, _, _ in evs],
                     [f"t{i % 3}" for i in range(len(evs))], np.array([a for _, _, a in evs], np.float64))


def reference(c: TxColumns, k: int) -> np.ndarray:
    """Each row's SPEND_FIELDS from scratch: the customer's last k earlier events, the median of those in
    the 30 days up to the row, each earlier event's unusual flag recomputed the same way when it came."""
    past: dict[str, list[tuple[float, float, bool]]] = {}
    out = []
    for i in range(len(c)):
        t, a = float(c.ts[i]), float(c.amount[i])
        mine = past.setdefault(c.customer_id[i], [])[-k:]
        win = [x for x in mine if t - SPEND_WINDOW_DAYS * DAY <= x[0] <= t]
        med = float(np.median([x[1] for x in win])) if len(win) >= MIN_EVENTS else None
        u = [sum(1 for x in mine if x[2] and t - w * DAY <= x[0] <= t) for w in UNUSUAL_WINDOWS_DAYS]
        m = 1.0 if med is None else med
        out.append([0.0 if med is None else np.log1p(m) / 5.0,
                    0.0 if med is None else float(np.clip(np.log(max(a, 0.01) / max(m, 0.01)), -5, 5)),
                    min(len(win), 60) / 30.0, min(u[0], 8) / 4.0, min(u[1], 8) / 4.0])
        past[c.customer_id[i]].append((t, a, med is not None and a > UNUSUAL_RATIO * med))
    return np.array(out, np.float32).reshape(-1, len(SPEND_FIELDS))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.integers(1, 8), st.lists(st.floats(-24 * 40, 0, allow_nan=False), max_size=10))
def test_the_memory_equals_a_recount_over_the_earlier_events(evs, k, late):
    """In arrival order, late transactions (stamped before events already read) included."""
    c = columns(evs)
    for i, hours in enumerate(late):  # some rows stamped back in time
        c.ts[(7 * i) % len(c)] += hours * 3600.0
    mem = SpendMemory(k=k, capacity=1)  # tiny: grows, and the ring wraps
    got = []
    for i in range(len(c)):
        got.append(mem.features([c.customer_id[i]], c.ts[i:i + 1], c.amount[i:i + 1]))
        mem.write([c.customer_id[i]], c.ts[i:i + 1], c.amount[i:i + 1])
    np.testing.assert_allclose(np.concatenate(got), reference(c, k), rtol=1e-6, atol=1e-6)


def _stream(c: TxColumns, splits=()) -> FraudContext:
    state = FraudState(spend_memory=True)
    bounds = sorted({0, len(c), *[s % (len(c) + 1) for s in splits]})
    return FraudContext.concat([state.advance_columns(c.take(np.arange(lo, hi))) for lo, hi in zip(bounds, bounds[1:])
                                if hi > lo])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.lists(st.integers(0, 90), max_size=4))
def test_the_state_gives_the_recount_whatever_the_batches(evs, splits):
    c = columns(evs)
    ctx = _stream(c, splits)
    np.testing.assert_allclose(ctx.spend_num, reference(c, 64), rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.integers(0, 89), st.lists(st.tuples(st.integers(0, 3), st.floats(1e-3, 24 * 40, allow_nan=False),
       st.floats(0, 1e9, allow_nan=False), st.integers(0, 89)), min_size=1, max_size=6))
def test_no_spend_field_uses_an_event_from_its_future(evs, target, future):
    """Transactions stamped after a transaction but read BEFORE it (late or clock-skewed data, any customer,
    any amount) leave its spend fields bit-identical."""
    c = columns(evs[:50])  # few enough that the inserted events never push an old one out of a ring
    target %= len(c)
    rows = [(c.transaction_id[i], c.ts[i], c.customer_id[i], c.amount[i]) for i in range(len(c))]
    t = float(c.ts[:target + 1].max())
    for n, (cust, hours, amount, at) in enumerate(future):
        rows.insert(at % (target + 1), (f"f{n}", t + hours * 3600.0, f"c{cust}", amount))
    mixed = TxColumns([r[0] for r in rows], np.array([r[1] for r in rows]), [r[2] for r in rows],
                      ["t0"] * len(rows), np.array([r[3] for r in rows]))
    where = mixed.transaction_id.index(c.transaction_id[target])
    with_future = _stream(mixed).spend_num[where]
    assert with_future.tobytes() == _stream(c).spend_num[target].tobytes()


def test_a_card_spending_five_times_its_usual_amount_reads_as_unusual():
    evs = [(0, 12.0, a) for a in (20.0, 25.0, 18.0, 22.0, 21.0)] + [(0, 1.0, 110.0), (0, 1.0, 105.0), (0, 1.0, 21.0)]
    ctx = _stream(columns(evs))
    ratio, u1 = SPEND_FIELDS.index("amount_over_customer_median"), SPEND_FIELDS.index("customer_unusual_amounts_1d")
    assert ctx.spend_num[5, ratio] > np.log(4.5) and ctx.spend_num[4, ratio] < np.log(1.2)
    assert ctx.spend_num[5, u1] == 0 and ctx.spend_num[6, u1] == 0.25 and ctx.spend_num[7, u1] == 0.5
    # the median is robust: two inflated amounts do not make a usual one look unusual
    assert abs(ctx.spend_num[7, ratio]) < np.log(1.2)


def test_the_memory_forgets_after_its_window_and_frees_the_row():
    state = FraudState(spend_memory=True, sweep_every_days=1.0)
    c = columns([(0, 1.0, 20.0)] * 4)
    state.advance_columns(c)
    assert len(state.spend) == 1
    later = TxColumns(["z"], np.array([c.ts[-1] + (SPEND_WINDOW_DAYS + 2) * DAY]), ["c9"], ["t0"], np.array([5.0]))
    state.advance_columns(later)
    assert "c0" not in state.spend.index
    probe = TxColumns(["p"], later.ts, ["c0"], ["t0"], np.array([20.0]))
    assert not state.context_columns(probe).spend_num.any()


def test_snapshots_keep_the_memory_per_customer_and_old_ones_still_restore():
    c = columns([(i % 3, 2.0, 10.0 * (1 + i % 5)) for i in range(40)])
    state = FraudState(spend_memory=True)
    state.advance_columns(c)
    probe = TxColumns(["p0", "p1", "p2"], np.full(3, c.ts[-1] + 60), ["c0", "c1", "c2"], ["t0"] * 3,
                      np.array([50.0, 50.0, 50.0]))
    want = state.context_columns(probe).spend_num
    back = FraudState.from_snapshot(state.snapshot())
    assert back.spend is not None
    assert back.context_columns(probe).spend_num.tobytes() == want.tobytes()
    part = FraudState.from_snapshot(state.snapshot(customers=["c1"]))
    got = part.context_columns(probe).spend_num
    assert got[1].tobytes() == want[1].tobytes() and not got[0].any() and not got[2].any()
    # a version 3 snapshot (before the spend memory) restores into a state that keeps one: it starts empty
    blob = FraudState().snapshot()
    with np.load(io.BytesIO(blob)) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    header["version"] = 3
    header.pop("spend_memory"), header.pop("spend_customers")
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    old = FraudState(spend_memory=True).restore(buf.getvalue())
    assert len(old.spend) == 0 and not old.context_columns(probe).spend_num.any()


def test_without_a_spend_memory_the_context_has_no_spend_fields():
    ctx = FraudState().advance_columns(columns([(0, 1.0, 20.0)] * 5))
    assert ctx.spend_num.shape == (5, 0)


def test_only_a_checkpoint_with_spend_fields_keeps_and_reads_them():
    from models.fraud_scorer import FraudModel, FraudModelConfig, FraudScorer
    from pipelines.contracts import Transaction

    torch.manual_seed(0)
    plain = FraudScorer(FraudModel(FraudModelConfig.from_preset("tiny", customer_history=3, terminal_history=3)), "p")
    assert plain.new_state().spend is None
    model = FraudModel(FraudModelConfig.from_preset("tiny", customer_history=3, terminal_history=3, spend=True)).eval()
    with torch.no_grad():
        model.spend_num.weight.mul_(50)  # make the spend fields matter
    scorer = FraudScorer(model, "s")
    state = scorer.new_state()
    assert state.spend is not None
    txs = [Transaction(transaction_id=f"x{i}", timestamp=datetime.fromtimestamp(T0 + 3600 * i, timezone.utc),
                       customer_id="c1", terminal_id="t1", amount=20.0) for i in range(4)]
    txs.append(Transaction(transaction_id="big", timestamp=datetime.fromtimestamp(T0 + 3600 * 5, timezone.utc),
                           customer_id="c1", terminal_id="t1", amount=100.0))
    ctx = state.advance_batch(txs)
    blank = ctx.take(np.arange(len(txs)))
    blank.spend_num = np.zeros_like(blank.spend_num)
    assert scorer.probabilities(ctx)[-1] != scorer.probabilities(blank)[-1]
    # the spend fields are named in the reasons
    out = scorer.score_context(txs, ctx, review_threshold=0.0, explain_top_k=60)
    assert set(SPEND_FIELDS) <= {r.feature for r in out[-1].reasons}


def test_the_shipped_review_checkpoint_reads_verdicts_and_usual_amounts():
    """`fraud-small-reviews` keeps a spend memory and both kinds of feedback move its scores the right way."""
    from pathlib import Path

    from models.fraud_scorer import SHIPPED_CHECKPOINT, FraudScorer

    scorer = FraudScorer.load(Path(SHIPPED_CHECKPOINT).parent / "fraud-small-reviews")
    assert scorer.model_version.startswith("fraud-small-reviews-")
    assert scorer.config.spend_fields == list(SPEND_FIELDS) and scorer.config.review_fields

    def last_score(amount: float, verdict: bool) -> float:
        """A card spending about 30, then 150, then `amount`; the 150 confirmed fraud a minute after it or not."""
        state = scorer.new_state()
        c = columns([(0, 8.0, a) for a in (30.0, 25.0, 35.0, 28.0, 32.0, 150.0)] + [(0, 2.0, amount)])
        state.advance_columns(c.take(np.arange(len(c) - 1)))
        if verdict:
            state.apply_dispositions([c.transaction_id[-2]], ["fraud"], [c.ts[-2] + 60])
        return float(scorer.probabilities(state.advance_columns(c.take(np.array([len(c) - 1]))))[0])

    assert last_score(150.0, False) > 5 * last_score(31.0, False)  # an unusual amount (0.78 vs 0.01)
    assert last_score(90.0, True) > 3 * last_score(90.0, False)  # on a card confirmed stolen (0.62 vs 0.09)
