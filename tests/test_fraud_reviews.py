"""Investigators' dispositions in the fraud state: visible from their decision time, apart from the
chargeback labels, per customer and per terminal in their own windows, in snapshots; and no score ever
uses a label or a disposition from its future (hypothesis)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.fraud_reviews import REVIEW_FIELDS, REVIEW_WINDOW_DAYS, ReviewMemory
from models.fraud_state import CURRENT_FIELDS, DAY, FraudState, TxColumns

T0 = 1.5230e9  # 2018-04-06


def cols(ids, ts, customers, terminals, amounts=None):
    n = len(ids)
    return TxColumns([str(i) for i in ids], np.asarray(ts, np.float64), [str(c) for c in customers],
                     [str(t) for t in terminals], np.asarray(amounts if amounts is not None else [20.0] * n, np.float64))


def review(ctx, field):
    return float(ctx.review_num[0, REVIEW_FIELDS.index(field)])


def probe(state, at, customer="c1", terminal="t1"):
    return state.context_columns(cols(["probe"], [at], [customer], [terminal]))


def test_a_disposition_is_visible_from_its_decision_time_not_after_the_chargeback_delay():
    st_ = FraudState(labels_delay_days=7)
    st_.advance_columns(cols(["a"], [T0], ["c1"], ["t1"]))
    assert st_.apply_dispositions(["a"], ["fraud"], [T0 + 3600]) == [1]  # located through the index
    before, at = probe(st_, T0 + 3599), probe(st_, T0 + 3600)
    for who in ("customer", "terminal"):
        assert review(before, f"{who}_reviewed_frauds") == 0
        assert review(at, f"{who}_reviewed_frauds") == pytest.approx(1 / 4)
    # kept apart from the chargeback labels: the known-fraud features do not move
    known = [CURRENT_FIELDS.index(f) for f in CURRENT_FIELDS if "fraud" in f or "risk" in f]
    assert at.cur_num[0, known].tolist() == probe(FraudState(labels_delay_days=7), T0 + 3600).cur_num[0, known].tolist()
    assert at.hist_label.max() <= 1  # no history slot shows a label
    # the reviewed event itself carries the verdict in both histories, from decided_at on
    assert before.hist_review.max() == 0 and sorted(at.hist_review[0].tolist())[-2:] == [1, 1]


def test_a_label_does_not_show_in_the_review_fields():
    st_ = FraudState(labels_delay_days=1)
    st_.advance_columns(cols(["a"], [T0], ["c1"], ["t1"]))
    st_.apply_label_columns(["a"], np.array([True]))
    later = probe(st_, T0 + 3 * DAY)
    assert later.cur_num[0, CURRENT_FIELDS.index("customer_known_frauds")] > 0
    assert review(later, "customer_reviewed_frauds") == 0 and review(later, "terminal_reviewed_frauds") == 0


def test_each_key_has_its_own_window_and_legit_is_counted_apart():
    st_ = FraudState()
    st_.apply_dispositions(["a", "b"], ["fraud", "legitimate"], [T0, T0], ["c1", "c1"], ["t1", "t1"])
    mid = probe(st_, T0 + (REVIEW_WINDOW_DAYS["customer"] + 1) * DAY)
    assert review(mid, "customer_reviewed_frauds") == 0  # past the customer window
    assert review(mid, "terminal_reviewed_frauds") == pytest.approx(1 / 4)  # still inside the terminal's
    assert review(mid, "terminal_reviewed_legit") == pytest.approx(1 / 4)
    assert review(mid, "terminal_days_since_reviewed_fraud") == pytest.approx(
        np.log1p(REVIEW_WINDOW_DAYS["customer"] + 1) / 4)
    late = probe(st_, T0 + (REVIEW_WINDOW_DAYS["terminal"] + 1) * DAY)
    assert review(late, "terminal_reviewed_frauds") == 0


def test_the_latest_visible_decision_on_a_transaction_stands_and_unsure_counts_nowhere():
    st_ = FraudState()
    st_.apply_dispositions(["a", "a", "b"], ["fraud", "legitimate", "unsure"], [T0, T0 + DAY, T0],
                           ["c1"] * 3, ["t1"] * 3)
    between, after = probe(st_, T0 + 3600), probe(st_, T0 + DAY + 1)
    assert review(between, "customer_reviewed_frauds") == pytest.approx(1 / 4)
    assert review(between, "customer_reviewed_legit") == 0
    assert review(after, "customer_reviewed_frauds") == 0
    assert review(after, "customer_reviewed_legit") == pytest.approx(1 / 4)


def test_a_disposition_nobody_can_place_is_unknown_and_bad_ones_are_refused():
    st_ = FraudState()
    assert st_.apply_dispositions(["nowhere"], ["fraud"], [T0]) == [3]
    with pytest.raises(ValueError, match="not one of"):
        st_.apply_dispositions(["a"], ["maybe"], [T0], ["c"], ["t"])
    with pytest.raises(ValueError, match="finite"):
        st_.apply_dispositions(["a"], ["fraud"], [float("nan")], ["c"], ["t"])


def test_snapshot_keeps_dispositions_and_an_old_snapshot_still_restores():
    st_ = FraudState()
    st_.advance_columns(cols(["a", "b"], [T0, T0 + 60], ["c1", "c2"], ["t1", "t2"]))
    st_.apply_dispositions(["a", "b"], ["fraud", "legitimate"], [T0 + 3600] * 2)
    blob = st_.snapshot()
    back = FraudState.from_snapshot(blob)
    for c, t in (("c1", "t1"), ("c2", "t2")):
        np.testing.assert_array_equal(probe(back, T0 + DAY, c, t).review_num, probe(st_, T0 + DAY, c, t).review_num)
    only = FraudState().restore(st_.snapshot(customers=["c2"], terminals=["t2"]))
    assert review(probe(only, T0 + DAY, "c1", "t1"), "customer_reviewed_frauds") == 0
    assert review(probe(only, T0 + DAY, "c2", "t2"), "customer_reviewed_legit") > 0
    # a version 2 snapshot (before dispositions): no review arrays, restores with empty review memories
    with np.load(io.BytesIO(blob)) as z:
        data = {k: z[k] for k in z.files if not k.startswith(("rc_", "rt_"))}
    header = json.loads(data["header"].tobytes())
    header["version"] = 2
    for k in ("review_customers", "review_terminals"):
        header.pop(k)
    data["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    old = FraudState.from_snapshot(buf.getvalue())
    assert probe(old, T0 + DAY).review_num.tolist() == probe(FraudState(), T0 + DAY).review_num.tolist()
    np.testing.assert_array_equal(probe(old, T0 + DAY).hist_num, probe(st_, T0 + DAY).hist_num)


def test_a_full_memory_drops_the_latest_decision_so_the_past_never_changes():
    mem = ReviewMemory(window_days=30, k=3)
    mem.add(["c"] * 3, [1, 2, 3], [1, 1, 1], [T0, T0 + 10, T0 + 20], clock=T0)
    ts = np.array([T0 + 11])
    before = mem.features(["c"], ts)[0]
    mem.add(["c"], [4], [2], [T0 + 12], clock=T0)  # decided after ts: takes the newest's place, not a seen one's
    np.testing.assert_array_equal(mem.features(["c"], ts)[0], before)
    mem.add(["c"], [5], [1], [T0 + 99], clock=T0)  # newer than all held: dropped
    assert not (mem.decided[mem.index["c"]] == T0 + 99).any()
    # past the window + a day of the clock, an entry is dead and its slot is free again
    mem.add(["c"], [6], [1], [T0 + 40 * DAY], clock=T0 + 40 * DAY)
    assert (mem.decided[mem.index["c"]] == T0 + 40 * DAY).any()
    mem.sweep(T0 + 80 * DAY)
    assert len(mem) == 0


# --- hypothesis: batch boundaries and the future --------------------------------------------------------

events = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.floats(0, 20, allow_nan=False),
                            st.floats(1, 500, allow_nan=False), st.booleans()), min_size=2, max_size=30)
verdicts = st.lists(st.tuples(st.integers(0, 29), st.sampled_from(["fraud", "legitimate", "unsure"]),
                              st.floats(0, 25, allow_nan=False)), max_size=12)


def stream(evs, dispositions, splits=(), extra=(), label_flip=(), at=()):
    """Feed events in time order. A disposition of transaction x_i is a message right after x_i; `at` adds
    such positions without a disposition. At each position the labels of the transactions read so far
    follow (as in a stream, messages have fixed places among the transactions); `splits` cuts the
    transactions between them into more batches. Returns all contexts."""
    evs = sorted(evs, key=lambda e: e[2])
    n = len(evs)
    c = cols([f"x{i}" for i in range(n)], [T0 + e[2] * DAY for e in evs], [f"c{e[0]}" for e in evs],
             [f"t{e[1]}" for e in evs], [e[3] for e in evs])
    fraud = np.array([e[4] != (i in label_flip) for i, e in enumerate(evs)])
    state = FraudState(customer_history=3, terminal_history=3, labels_delay_days=2, strict_windows=True)
    dis = [(i % n, k, T0 + d * DAY) for i, k, d in list(dispositions) + list(extra)]
    messages = {n, *[d[0] + 1 for d in dis], *[i % n + 1 for i in at]}  # labels and dispositions come here
    bounds = sorted({0, *messages, *[s % (n + 1) for s in splits]})
    out, labelled = [], 0
    for lo, hi in zip(bounds, bounds[1:]):
        out.append(state.advance_columns(c.take(np.arange(lo, hi))))
        if hi not in messages:
            continue
        idx = np.arange(labelled, hi)
        state.apply_label_columns([c.transaction_id[i] for i in idx], fraud[idx])
        labelled = hi
        now = [d for d in dis if d[0] == hi - 1]
        if now:
            state.apply_dispositions([f"x{d[0]}" for d in now], [d[1] for d in now], [d[2] for d in now],
                                     [c.customer_id[d[0]] for d in now], [c.terminal_id[d[0]] for d in now])
    from models.fraud_state import FraudContext

    return FraudContext.concat(out), c, fraud


def tiny_review_model():
    from models.fraud_scorer import FraudModel, FraudModelConfig

    torch.manual_seed(0)
    model = FraudModel(FraudModelConfig.from_preset("tiny", customer_history=3, terminal_history=3, reviews=True))
    with torch.no_grad():  # make the review fields matter
        model.review_num.weight.mul_(50)
    return model.eval()


MODEL = tiny_review_model()


def scores(ctx):
    from models.fraud_scorer import context_tensors

    with torch.inference_mode():
        return MODEL.fast_logits(context_tensors(ctx)).numpy()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, verdicts, st.lists(st.integers(0, 40), max_size=4))
def test_batch_boundaries_do_not_change_any_context(evs, dis, splits):
    whole, _, _ = stream(evs, dis)
    split, _, _ = stream(evs, dis, splits)
    for f in whole.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(whole, f), getattr(split, f), err_msg=f)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, verdicts, st.integers(0, 29), st.lists(st.tuples(st.integers(0, 29),
       st.sampled_from(["fraud", "legitimate", "unsure"]), st.floats(0, 1, allow_nan=False)), max_size=6),
       st.lists(st.integers(0, 29), max_size=6))
def test_no_score_uses_a_label_or_disposition_from_its_future(evs, dis, target, extra, flips):
    """Add dispositions decided after a transaction and flip labels that only become visible after it
    (event time + delay > its time): that transaction's context and score stay bit-identical."""
    _, c, _ = stream(evs, dis)
    n = len(c)
    target %= n
    t = c.ts[target]
    future = [(i, k, (t - T0) / DAY + 1e-6 + d) for i, k, d in extra]  # decided strictly after t
    flip = {i % n for i in flips if c.ts[i % n] + 2 * DAY > t}  # visible (if ever) only after t
    base_ctx, _, _ = stream(evs, dis, at=[i for i, _, _ in extra])
    ctx, _, _ = stream(evs, dis, extra=future, label_flip=flip)
    one, base_one = ctx.take(np.array([target])), base_ctx.take(np.array([target]))
    for f in one.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(one, f), getattr(base_one, f), err_msg=f)
    assert scores(one).tobytes() == scores(base_one).tobytes()


def test_the_no_look_ahead_check_can_fail():
    """The same comparison sees a disposition decided BEFORE a transaction (so the property test above can fail)."""
    evs = [(0, 0, 0.0, 50.0, False), (0, 0, 1.0, 50.0, False)]
    base, _, _ = stream(evs, [])
    seen, _, _ = stream(evs, [(0, "fraud", 0.5)])
    assert scores(seen.take(np.array([1]))).tobytes() != scores(base.take(np.array([1]))).tobytes()


# --- the scorer: review fields behind the config ---------------------------------------------------------

def test_a_checkpoint_without_review_fields_scores_exactly_as_before(tmp_path):
    """An old config (no review_fields key) loads strictly and ignores review_num; a new one reads it."""
    from models.checkpoint import save_task_model
    from models.fraud_scorer import FraudModel, FraudModelConfig, FraudScorer

    torch.manual_seed(0)
    old = FraudModel(FraudModelConfig.from_preset("tiny", customer_history=3, terminal_history=3))
    cfg = old.config.to_dict()
    cfg.pop("review_fields"), cfg.pop("strict_windows")  # as written before the review loop
    save_task_model(tmp_path / "old", old, {"task": "fraud", "model_version": "old", "fraud": cfg}, dtype=None)
    scorer = FraudScorer.load(tmp_path / "old")
    assert scorer.config.review_fields == [] and not scorer.new_state().strict_windows
    ctx, _, _ = stream([(0, 0, 0.0, 50.0, True), (0, 0, 1.0, 50.0, False)], [(0, "fraud", 0.5)])
    blank = ctx.take(np.arange(2))
    blank.review_num = np.zeros_like(blank.review_num)
    assert scorer.probabilities(ctx).tobytes() == scorer.probabilities(blank).tobytes()
    new = FraudScorer(MODEL, "new")
    assert new.probabilities(ctx)[1] != new.probabilities(blank)[1]
    assert new.new_state().strict_windows


def test_reasons_name_the_review_fields():
    from models.fraud_scorer import FraudScorer
    from pipelines.contracts import Transaction

    scorer = FraudScorer(MODEL, "new")
    state = scorer.new_state()
    from datetime import datetime, timezone

    t = datetime.fromtimestamp(T0, timezone.utc)
    state.apply_dispositions(["old"], ["fraud"], [T0 - 3600], ["c1"], ["t1"])
    tx = Transaction(transaction_id="x", timestamp=t, customer_id="c1", terminal_id="t1", amount=30.0)
    out = scorer.score([tx], state, review_threshold=0.0, explain_top_k=60)
    feats = {r.feature for r in out[0].reasons}
    assert set(REVIEW_FIELDS) <= feats


# --- the simulated investigators -----------------------------------------------------------------------

day_rows = st.lists(st.tuples(st.integers(0, 30), st.floats(0, 86399.9, allow_nan=False),
                              st.floats(0, 1, allow_nan=False), st.booleans()), min_size=1, max_size=80)


@settings(max_examples=60, deadline=None)
@given(day_rows, st.integers(0, 40), st.floats(0, 3 * 86400, allow_nan=False))
def test_the_simulated_investigators_never_reveal_a_label_before_decided_at(rows, k, latency):
    """Verdicts come after the whole day (and the latency), cover exactly the top-k cards' transactions of
    that day, and tell the truth; the state shows none of them before decided_at."""
    from models.review_simulator import DAY as D
    from models.review_simulator import review_day

    day0 = 17700 * D
    ts = np.array([day0 + r[1] for r in rows])
    ids = [f"x{i}" for i in range(len(rows))]
    cust = [f"c{r[0]}" for r in rows]
    scores_ = np.array([r[2] for r in rows])
    fraud = np.array([r[3] for r in rows])
    v = review_day(ts, ids, cust, [f"t{r[0] % 3}" for r in rows], scores_, fraud, k, latency)
    assert (v.decided_at >= ts.max()).all() and (v.decided_at == day0 + D + latency).all()
    best = {}
    for c, s in zip(cust, scores_):
        best[c] = max(best.get(c, -1), s)
    chosen = set(sorted(best, key=lambda c: (-best[c], c))[:k])
    assert set(v.transaction_id) == {i for i, c in zip(ids, cust) if c in chosen}
    truth = dict(zip(ids, fraud))
    assert all((kind == "fraud") == truth[i] for i, kind in zip(v.transaction_id, v.kind))
    state = FraudState()
    state.apply_dispositions(v.transaction_id, v.kind, v.decided_at, v.customer_id, v.terminal_id)
    for c in set(v.customer_id):
        early = state.context_columns(cols(["p"], [day0 + D + latency - 1e-3], [c], ["t0"]))
        assert not early.review_num[:, [0, 2]].any()  # no count before decided_at


def test_the_simulator_refuses_a_mixed_day_and_a_negative_latency():
    from models.review_simulator import review_day

    with pytest.raises(ValueError, match="one UTC day"):
        review_day(np.array([0.0, 86400.0]), ["a", "b"], ["c", "c"], ["t", "t"], np.ones(2), np.zeros(2), 1, 0)
    with pytest.raises(ValueError, match="latency"):
        review_day(np.array([0.0]), ["a"], ["c"], ["t"], np.ones(1), np.zeros(1), 1, -1)
