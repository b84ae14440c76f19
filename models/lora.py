"""LoRA fine-tuning (peft) of a trained MoE task model on new data.

Targets the MLA projections (q_proj / q_a_proj / q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj)
and the dense/shared-expert MLP linears (gate_proj, up_proj, down_proj). The routed experts of
transformers' DeepseekV3 are stored as 3-D parameters (not nn.Linear), so LoRA reaches them through
the shared expert and attention; the router stays frozen, which keeps expert assignment stable.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

MLA_TARGETS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
EXPERT_TARGETS = ("gate_proj", "up_proj", "down_proj")


def lora_targets(model: nn.Module, names: Iterable[str] = MLA_TARGETS + EXPERT_TARGETS) -> list[str]:
    """Module suffixes present in the model (peft needs at least one to match)."""
    wanted = set(names)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in wanted})


def add_lora(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0,
             trainable_extra: Iterable[str] = ("head",)) -> nn.Module:
    """Wrap `model` with LoRA adapters; only adapters (and `trainable_extra` modules, e.g. a task head) train."""
    from models.extras import require

    peft = require("peft", "train", "LoRA fine-tuning")
    LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model

    targets = lora_targets(model)
    if not targets:
        raise ValueError("no MLA / expert Linear layers found to adapt")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name or any(name.startswith(e + ".") for e in trainable_extra)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights (for serving: no extra matmuls)."""
    for module in model.modules():
        if hasattr(module, "merge") and hasattr(module, "lora_A"):
            module.merge()
    return model


def finetune(model: nn.Module, batches: Iterable[tuple[dict, torch.Tensor]], loss_fn: Callable, lr: float = 1e-3,
             steps: int | None = None) -> list[float]:
    """A plain loop over (inputs, targets) batches updating only trainable (LoRA) parameters."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for i, (inputs, target) in enumerate(batches):
        if steps is not None and i >= steps:
            break
        loss = loss_fn(model(inputs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
