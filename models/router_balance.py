"""Auxiliary-loss-free load balancing (DeepSeek-V3, section 2.1.2) for training the MoE routers.

Each router's `e_score_correction_bias` is added to the expert scores only when choosing the top-k
experts. After every optimiser step the bias of an overloaded expert goes down by `rate` and that of
an underloaded one goes up (the sign of mean load minus the expert's load), so experts stay balanced
without a balance term in the loss. Works with routers that return (logits, weights, indices) and with
those that return logits only (indices then recomputed as top-k of sigmoid(logits) + bias).
"""

from __future__ import annotations

import torch
from torch import nn


def routed_experts(out, top_k: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The expert indices a router chose, from its forward output: the integer tensor of a
    (logits, weights, indices) tuple, else top-k of the scores (sigmoid + correction bias for
    DeepSeek-V3 routers, raw logits for softmax routers such as Mixtral's and Qwen3-MoE's)."""
    if isinstance(out, tuple):
        ints = [o for o in out if torch.is_tensor(o) and not o.is_floating_point()]
        if ints:
            return ints[-1]
        out = out[0]
    scores = out.float()
    if bias is not None:
        scores = scores.sigmoid() + bias
    return scores.topk(top_k, dim=-1).indices


class RouterBiasBalancer:
    def __init__(self, model: nn.Module, top_k: int, rate: float = 1e-3):
        self.rate = rate
        self.top_k = top_k
        self.routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
        self.counts = {id(m): torch.zeros_like(m.e_score_correction_bias, dtype=torch.float32) for m in self.routers}
        self.handles = [m.register_forward_hook(self._hook) for m in self.routers]

    def _hook(self, module, _inp, out):
        if not module.training:
            return
        with torch.no_grad():
            idx = routed_experts(out, self.top_k, module.e_score_correction_bias)
            n = module.e_score_correction_bias.numel()
            self.counts[id(module)] += torch.bincount(idx.reshape(-1), minlength=n)[:n].float()

    @torch.no_grad()
    def step(self) -> None:
        """Nudge every bias towards balance by what the forwards since the last step routed; reset counts."""
        for m in self.routers:
            c = self.counts[id(m)]
            if c.sum() > 0:
                m.e_score_correction_bias += self.rate * torch.sign(c.mean() - c).to(m.e_score_correction_bias.dtype)
            c.zero_()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
