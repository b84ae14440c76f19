"""FraudScorer: probabilities, decisions, reasons, unseen ids, batch == one-by-one, restore -> same scores."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from models.checkpoint import router_stats, save_task_model
from models.fraud_scorer import FraudModel, FraudModelConfig, FraudScorer, columns_from_frame, context_tensors
from models.fraud_state import FraudState
from pipelines.contracts import Decision, Label, Transaction

T0 = datetime(2018, 4, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return FraudScorer(FraudModel(FraudModelConfig.from_preset("tiny")), "fraud-tiny-test")


def transactions(n=60, seed=0, start=0):
    rng = np.random.default_rng(seed)
    return [Transaction(transaction_id=f"tx{start + i}", timestamp=T0 + timedelta(minutes=37 * (start + i)),
                        customer_id=f"c{rng.integers(0, 8)}", terminal_id=f"t{rng.integers(0, 5)}",
                        amount=float(rng.gamma(2, 40))) for i in range(n)]


def test_scores_are_probabilities_with_decisions(scorer):
    out = scorer.score(transactions(), scorer.new_state(), alert_threshold=0.6, review_threshold=0.4)
    assert len(out) == 60
    for s in out:
        assert 0.0 <= s.score <= 1.0
        expected = Decision.decline if s.score >= 0.6 else Decision.review if s.score >= 0.4 else Decision.approve
        assert s.decision == expected
        assert s.model_version == "fraud-tiny-test"


def test_reasons_for_flagged_rows(scorer):
    out = scorer.score(transactions(), scorer.new_state(), alert_threshold=1.0, review_threshold=0.0)
    for s in out:
        assert 1 <= len(s.reasons) <= 5
        assert {r.source for r in s.reasons} <= {"current", "customer_history", "terminal_history"}
        weights = [abs(r.weight) for r in s.reasons]
        assert weights == sorted(weights, reverse=True)
    # history events get credit too (explain() ranks every field and event; top-5 may be all current fields)
    from models.fraud_scorer import explain

    ctx = scorer.new_state().advance_batch(transactions())
    ranked = explain(scorer.model, context_tensors(ctx), top_k=1000)
    events = [r for r in ranked[-1] if r[0] != "current"]
    assert len(events) == ctx.hist_label.shape[1] and any(abs(r[3]) > 0 for r in events)
    # nothing flagged -> no reasons computed
    quiet = scorer.score(transactions(start=100), scorer.new_state(), alert_threshold=1.0, review_threshold=1.0)
    assert all(s.reasons == [] for s in quiet)


def test_no_history_and_unseen_ids(scorer):
    state = scorer.new_state()
    scorer.score(transactions(), state, 0.5, 0.2)
    fresh = Transaction(transaction_id="new", timestamp=T0 + timedelta(days=3), customer_id="never-seen",
                        terminal_id="never-seen-either", amount=12.5)
    [s] = scorer.score([fresh], state, 0.5, 0.2)
    assert 0.0 <= s.score <= 1.0
    [s2] = scorer.score([fresh.model_copy(update={"transaction_id": "new2"})], scorer.new_state(), 0.5, 0.2)
    assert np.isfinite(s2.score)


def test_batch_equals_one_by_one(scorer):
    txs = transactions(80)
    batch = scorer.score(txs, scorer.new_state(), 0.5, 0.2)
    state = scorer.new_state()
    single = [scorer.score([t], state, 0.5, 0.2)[0] for t in txs]
    np.testing.assert_allclose([s.score for s in batch], [s.score for s in single], atol=1e-5)


def test_restore_gives_same_scores(scorer):
    txs = transactions(120)
    state = scorer.new_state()
    scorer.score(txs[:80], state, 0.5, 0.2)
    state.apply_labels([Label(transaction_id=t.transaction_id, is_fraud=i % 5 == 0, reported_at=T0)
                        for i, t in enumerate(txs[:80])])
    restored = FraudState.from_snapshot(state.snapshot())
    a = scorer.score(txs[80:], state, 0.5, 0.2)
    b = scorer.score(txs[80:], restored, 0.5, 0.2)
    assert [s.score for s in a] == [s.score for s in b]


def test_fast_path_equals_native_forward(scorer):
    state = scorer.new_state()
    ctx = state.advance_batch(transactions(40))
    t = context_tensors(ctx)
    with torch.inference_mode():
        torch.testing.assert_close(scorer.model.fast_logits(t), scorer.model(t), atol=1e-5, rtol=1e-5)


def test_score_frame_matches_score(scorer):
    import pandas as pd

    txs = transactions(50)
    frame = pd.DataFrame({"transaction_id": [t.transaction_id for t in txs], "timestamp": [t.timestamp for t in txs],
                          "customer_id": [t.customer_id for t in txs], "terminal_id": [t.terminal_id for t in txs],
                          "amount": [t.amount for t in txs]})
    fast = scorer.score_frame(frame, scorer.new_state(), batch_size=16)
    slow = [s.score for s in scorer.score(txs, scorer.new_state(), 0.5, 0.2)]
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert len(columns_from_frame(frame)) == 50


def test_load_default_and_saved(tmp_path, scorer, monkeypatch):
    import models.fraud_scorer as fs

    monkeypatch.setattr(fs, "SHIPPED_CHECKPOINT", tmp_path / "absent")
    assert FraudScorer.load().model_version == "fraud-tiny-random-untrained"
    config = {"task": "fraud", "model_version": "fraud-tiny-saved", "fraud": scorer.config.to_dict()}
    save_task_model(tmp_path / "ck", scorer.model, config, {"metrics": {"ap": 0.5}}, dtype=None)
    loaded = FraudScorer.load(tmp_path / "ck")
    assert loaded.model_version == "fraud-tiny-saved"
    txs = transactions(20)
    np.testing.assert_allclose([s.score for s in loaded.score(txs, loaded.new_state(), 0.5, 0.2)],
                               [s.score for s in scorer.score(txs, scorer.new_state(), 0.5, 0.2)], atol=1e-6)
    assert "ap" in (tmp_path / "ck" / "README.md").read_text()


def test_router_stats_on_the_fraud_model(scorer):
    ctx = scorer.new_state().advance_batch(transactions(64))
    stats = router_stats(scorer.model, context_tensors(ctx))
    assert len(stats) == scorer.model.config.backbone_config().num_hidden_layers
    for layer in stats.values():
        assert layer["assignments"] == 64 * 16 * 2  # every token routed to top-2 experts
        assert abs(sum(layer["token_share"]) - 1.0) < 1e-3
        assert 0.0 < layer["entropy_ratio"] <= 1.0
