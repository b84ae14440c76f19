"""Seeds' techniques on the fraud model: LoRA fine-tuning, int8 dynamic quantisation, gradient checkpointing."""

from datetime import datetime, timedelta, timezone

import numpy as np
import torch

from models.fraud_scorer import FraudModel, FraudModelConfig, FraudScorer, context_tensors
from models.fraud_state import FraudState
from models.lora import add_lora, finetune, lora_targets, merge_lora, trainable_parameters
from pipelines.contracts import Transaction

T0 = datetime(2018, 4, 1, tzinfo=timezone.utc)


def batch(n=96, seed=0):
    rng = np.random.default_rng(seed)
    txs = [Transaction(transaction_id=f"x{i}", timestamp=T0 + timedelta(minutes=11 * i), customer_id=f"c{rng.integers(0, 9)}",
                       terminal_id=f"t{rng.integers(0, 6)}", amount=float(rng.gamma(2, 40))) for i in range(n)]
    ctx = FraudState(8, 7).advance_batch(txs)
    y = torch.tensor([t.amount > 90 for t in txs], dtype=torch.float32)  # a learnable rule
    return context_tensors(ctx), y


def model(seed=0):
    torch.manual_seed(seed)
    return FraudModel(FraudModelConfig.from_preset("tiny"))


def test_lora_targets_mla_and_expert_linears_and_learns():
    m = model()
    targets = lora_targets(m)
    assert {"kv_a_proj_with_mqa", "kv_b_proj", "o_proj"} <= set(targets)
    assert {"gate_proj", "up_proj", "down_proj"} & set(targets)  # the shared expert's linears
    base = {k: v.clone() for k, v in m.state_dict().items()}
    m = add_lora(m, r=4)
    trainable, total = trainable_parameters(m)
    assert 0 < trainable < total / 3
    x, y = batch()
    losses = finetune(m, [(x, y)] * 30, torch.nn.BCEWithLogitsLoss(), lr=1e-2)
    assert losses[-1] < losses[0]
    # base weights untouched, adapters carry the change
    for k, v in m.state_dict().items():
        if "lora_" not in k and "head" not in k and k.replace(".base_layer", "") in base:
            torch.testing.assert_close(v, base[k.replace(".base_layer", "")])
    with torch.no_grad():
        before = m(x)
        merge_lora(m)
        torch.testing.assert_close(m(x), before, atol=1e-4, rtol=1e-4)


def test_int8_dynamic_quantisation_keeps_scores_close():
    fp32 = FraudScorer(model(), "t")
    q = FraudScorer(model(), "t").quantize()
    assert q.model_version.endswith("+int8")
    assert any("quantized" in type(mod).__module__ for mod in q.model.backbone.modules())
    x, _ = batch()
    from models.fraud_state import FraudContext  # noqa: F401  (contexts are shared by both)

    with torch.inference_mode():
        a = torch.sigmoid(fp32.model.fast_logits(x))
        b = torch.sigmoid(q.model.fast_logits(x))
    assert float((a - b).abs().max()) < 0.05
    # explanations still work on a quantised scorer (they use the fp32 copy)
    txs = [Transaction(transaction_id="q1", timestamp=T0, customer_id="c", terminal_id="t", amount=5.0)]
    [s] = q.score(txs, q.new_state(), 1.0, 0.0)
    assert s.reasons


def test_gradient_checkpointing_same_loss_and_grads():
    x, y = batch()
    losses, grads = [], []
    for ckpt in (False, True):
        m = model(1)
        m.train()
        if ckpt:
            m.backbone.activation_checkpointing_enable()
            assert m.backbone.is_activation_checkpointing
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append(m.head.weight.grad.clone())
    assert abs(losses[0] - losses[1]) < 1e-6
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
