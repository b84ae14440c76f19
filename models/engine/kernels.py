"""Small numeric kernels the engine's layers call, kept apart from the model code.

Each is plain PyTorch and runs anywhere (CPU tests). `enable_compile()` swaps the elementwise ones
used by decode steps and prefill for `torch.compile`d versions on GPU, which fuses their many tiny launches
(rms norm, rope, masked softmax, SiLU*up, the router's scoring) into one Triton kernel each and, at prefill
sizes, saves whole passes over large tensors (prefill's SiLU*up is a Triton pass of its own, fused_silu.py); the
matrix products stay on cuBLAS / CUTLASS (`torch._grouped_mm`) or the engine's Triton kernels (fused_moe.py,
fused_router.py, fused_mla.py).
"""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' DeepseekV3RMSNorm, op for op (fp32 statistics, weight applied in the input dtype)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """(residual + x, rms_norm(residual + x)): the residual add fused with the next norm."""
    h = residual + x
    return h, rms_norm(h, weight, eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotary embedding on the last dim; cos/sin are half-width tables broadcastable to x[..., :d/2].

    Same arithmetic as transformers' DeepSeek rope: interleaved pairs are rotated and written out
    de-interleaved (first all even, then all odd dims), which is what the cached rope key holds.
    """
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for a fused [.., 2I] gate|up projection."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def masked_softmax(scores: torch.Tensor, scale: float, valid_len: torch.Tensor) -> torch.Tensor:
    """softmax(scores * scale) over the last dim, keys at index >= valid_len[b] masked out.

    scores: [B, heads, S]; valid_len: [B] (the query's position + 1). Returns the input dtype.
    """
    keys = torch.arange(scores.shape[-1], device=scores.device)
    mask = keys[None, None, :] < valid_len[:, None, None]
    s = (scores.float() * scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1).to(scores.dtype)


def masked_softmax_upto(scores: torch.Tensor, scale: float, pos: torch.Tensor) -> torch.Tensor:
    """masked_softmax over keys 0..pos[b] (the +1 inside, so a compiled decode step fuses it)."""
    return masked_softmax(scores, scale, pos + 1)


def route_sigmoid_topk(
    logits: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing on fp32 router logits [T, E]: (weights [T, k] fp32, expert ids [T, k])."""
    scores = logits.sigmoid()
    choice = scores + bias
    if n_group > 1:
        t, e = choice.shape
        grouped = choice.view(t, n_group, e // n_group)
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = group_scores.topk(topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0)
        keep = group_mask.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
        choice = choice.masked_fill(keep == 0, float("-inf"))
    idx = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, idx)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, idx


def expert_order(flat_idx: torch.Tensor, num_experts: int):
    """Sort (token, expert) pairs by expert: (order, dest, offsets) with x_sorted = x_pairs[order],
    pairs = sorted[dest] and offsets the int32 cumulative group ends. Stable (argsort) version."""
    order = torch.argsort(flat_idx, stable=True)
    dest = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    counts = torch.zeros(num_experts, dtype=torch.int32, device=flat_idx.device)
    counts.scatter_add_(0, flat_idx, torch.ones_like(flat_idx, dtype=torch.int32))
    return order, dest, counts.cumsum(0, dtype=torch.int32)


def expert_order_onehot(flat_idx: torch.Tensor, num_experts: int):
    """Same result as expert_order by counting instead of sorting: a few fusable elementwise/scan
    ops, far cheaper than a radix sort for the few hundred pairs of a decode step."""
    onehot = (flat_idx[:, None] == torch.arange(num_experts, device=flat_idx.device)).long()  # [M, E]
    counts = onehot.sum(0)
    ends = counts.cumsum(0)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # place among the pairs of the same expert
    dest = (ends - counts).gather(0, flat_idx) + rank
    order = torch.empty_like(dest).scatter_(0, dest, torch.arange(dest.numel(), device=dest.device))
    return order, dest, ends.to(torch.int32)


def combine_experts(y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[t, k] * y[t, k, :] in fp32, back to y's dtype: y [T, k, H], weights [T, k]."""
    return (y.float() * weights.unsqueeze(-1)).sum(1).to(y.dtype)


def _grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] >= 9
    return device.type == "cpu"


def grouped_gemm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, use_grouped_mm: bool) -> torch.Tensor:
    """Rows of x sorted by expert times each expert's weight: x[M, K] @ weight[e, N, K]^T -> [M, N].

    offsets[e] is the (int32, cumulative) end row of expert e's group. `torch._grouped_mm` runs all
    groups in one launch with no host sync (CUDA-graph safe); the fallback loops over experts and
    reads the group sizes on the host.
    """
    if use_grouped_mm:
        return torch._grouped_mm(x, weight.transpose(1, 2), offs=offsets)
    out = x.new_empty(x.shape[0], weight.shape[1])
    ends = offsets.tolist()
    start = 0
    for e, end in enumerate(ends):
        if end > start:
            out[start:end] = F.linear(x[start:end], weight[e])
        start = end
    return out


from .fused_moe import moe_align  # noqa: E402 - the fused MoE's PyTorch pieces
from .fused_router import append_shared  # noqa: E402

_FUSABLE = ("rms_norm", "add_rms_norm", "apply_rope", "silu_mul", "masked_softmax", "masked_softmax_upto", "route_sigmoid_topk",
            "expert_order", "combine_experts", "append_shared", "moe_align")

# Four kernel sets: `eager` (eager mixed steps, references); `decode`, which enable_compile() turns into
# torch.compile'd kernels (launch-bound at small batch); `prefill`, compiled too unless
# set_prefill_compiled(False): at prefill sizes the eager elementwise ops are separate passes over
# [tokens x 2,816] / fp32 [tokens x 6 x 2,048] tensors (~40% of a prefill's GPU time, measured on an H100).
# Prefill keeps the sorting expert order (a one-hot scan over 100K pairs would be slow).
eager = SimpleNamespace(**{name: globals()[name] for name in _FUSABLE})
decode = SimpleNamespace(**vars(eager))
decode.expert_order = expert_order_onehot
_DECODE_EAGER = dict(vars(decode))
prefill = SimpleNamespace(**vars(eager))
# packed mixed steps (decode rows + a prefill piece, hundreds of tokens, in a CUDA graph): the decode kernels,
# compiled alike, but the sorting expert order (the one-hot scan is slow at thousands of pairs)
mixed = SimpleNamespace(**vars(decode))
mixed.expert_order = expert_order
_PREFILL_COMPILED = ("rms_norm", "add_rms_norm", "apply_rope", "silu_mul", "combine_experts")
_prefill_compiled = True


_compiled: dict[str, object] = {}


def enable_compile() -> None:
    """Compile the decode kernels (dynamic shapes, so one compile serves every batch bucket > 1)."""
    for name in _FUSABLE:
        if name not in _compiled:
            fn = _DECODE_EAGER[name]
            _compiled[name] = _CompiledOrEager(name, torch.compile(fn, dynamic=True, fullgraph=True), fn)
        setattr(decode, name, _compiled[name])
        if name != "expert_order":
            setattr(mixed, name, _compiled[name])
    set_prefill_compiled(_prefill_compiled)


def set_prefill_compiled(on: bool) -> None:
    """Prefill through the compiled elementwise kernels (once enable_compile() has run) or eagerly."""
    global _prefill_compiled
    _prefill_compiled = bool(on)
    for name in _PREFILL_COMPILED:
        setattr(prefill, name, _compiled[name] if on and name in _compiled else getattr(eager, name))
    if on and "silu_mul" in _compiled:  # the Triton pass at prefill sizes (fused_silu.py), compiled where it cannot run
        from . import fused_silu

        if fused_silu.triton is not None:
            prefill.silu_mul = functools.partial(fused_silu.silu_mul, fallback=_compiled["silu_mul"])


def disable_compile() -> None:
    decode.__dict__.update(_DECODE_EAGER)
    mixed.__dict__.update({k: v for k, v in _DECODE_EAGER.items() if k != "expert_order"})
    prefill.__dict__.update(vars(eager))


class _CompiledOrEager:
    """A compiled kernel that falls back to its eager version for good if compiling it fails
    (first calls happen in the warm-up before graph capture, never inside a capture)."""

    def __init__(self, name, compiled, eager_fn):
        self.name, self.compiled, self.eager_fn, self.ok = name, compiled, eager_fn, True

    def __call__(self, *args):
        if self.ok:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: keep serving, eagerly
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    raise
                warnings.warn(f"torch.compile of {self.name} failed, running it eagerly: {exc!r:.300}")
                self.ok = False
        return self.eager_fn(*args)
