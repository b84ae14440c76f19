"""The router in one kernel: gate logits (fp32), sigmoid, correction bias, top-k, weights, shared pairs.

DeepSeek-V3 routing without group limits (n_group == 1, as the lite shape), one program per token:
logits = x @ W_gate^T accumulated in fp32 from the model-dtype weights (bf16 -> fp32 is exact, so this
is transformers' fp32 routing), scores = sigmoid(logits), the top-k of scores + bias chosen by k rounds
of arg-max (lowest expert id on a tie), weights = the chosen scores (normalised if norm_topk_prob) times
routed_scaling_factor. Output: the token's pairs for `fused_moe`, routed experts in increasing id order,
then the shared MLP's slices (ids n_routed.., weight 1.0).

`route_pairs_reference` is the same in PyTorch (the engine's `route_sigmoid_topk`), used on CPU, for
group-limited routing, and by the benchmark to check the kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .triton_support import INTERPRET as _INTERPRET
from .triton_support import autotune_bench, available, tl, triton  # noqa: F401  (available: the module's test)


def append_shared(weights: torch.Tensor, idx: torch.Tensor, n_routed: int, n_shared: int):
    """Routing (weights [T, k] fp32, ids [T, k]) -> pairs (pair_expert [T*(k+S)] int64, pair_weight fp32)."""
    t = idx.shape[0]
    if n_shared:
        shared = torch.arange(n_routed, n_routed + n_shared, device=idx.device).expand(t, n_shared)
        idx = torch.cat([idx, shared], dim=1)
        weights = torch.cat([weights, weights.new_ones(t, n_shared)], dim=1)
    return idx.reshape(-1).long(), weights.reshape(-1).float()


def route_pairs_reference(x, gate_weight, bias, top_k, n_group, topk_group, norm_topk_prob, scaling, n_shared, kk):
    """Pairs as the kernel lays them out, from the engine's PyTorch routing (kk: a kernel namespace)."""
    logits = F.linear(x.float(), gate_weight.float())
    weights, idx = kk.route_sigmoid_topk(logits, bias, top_k, n_group, topk_group, norm_topk_prob, scaling)
    return kk.append_shared(weights, idx, gate_weight.shape[0], n_shared)


if triton is not None:

    @triton.jit
    def _router_kernel(x_ptr, w_ptr, bias_ptr, pair_expert_ptr, pair_weight_ptr, stride_x, scaling,
                       H: tl.constexpr, E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr,
                       N_SHARED: tl.constexpr, S_P2: tl.constexpr, NORM: tl.constexpr, BLOCK_H: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        offs_e = tl.arange(0, E_P2)
        e_mask = offs_e < E
        acc = tl.zeros([E_P2], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            h_mask = offs_h < H
            xh = tl.load(x_ptr + t * stride_x + offs_h, mask=h_mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + offs_e[:, None] * H + offs_h[None, :], mask=e_mask[:, None] & h_mask[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * xh[None, :], axis=1)
        scores = 1.0 / (1.0 + tl.exp(-acc))
        bias = tl.load(bias_ptr + offs_e, mask=e_mask, other=0.0)
        choice = tl.where(e_mask, scores + bias, float("-inf"))
        sel = offs_e < 0
        for _ in tl.static_range(TOP_K):
            best = tl.max(choice, axis=0)
            pick = tl.min(tl.where(choice == best, offs_e, E_P2), axis=0)
            hit = offs_e == pick
            sel = sel | hit
            choice = tl.where(hit, float("-inf"), choice)
        wts = tl.where(sel, scores, 0.0)
        if NORM:
            wts = wts / (tl.sum(wts, axis=0) + 1e-20)
        wts = wts * scaling
        slot = tl.cumsum(sel.to(tl.int32), axis=0) - 1
        base = t * (TOP_K + N_SHARED)
        tl.store(pair_expert_ptr + base + slot, offs_e.to(tl.int64), mask=sel)
        tl.store(pair_weight_ptr + base + slot, wts, mask=sel)
        if N_SHARED > 0:
            offs_s = tl.arange(0, S_P2)
            s_mask = offs_s < N_SHARED
            tl.store(pair_expert_ptr + base + TOP_K + offs_s, (E + offs_s).to(tl.int64), mask=s_mask)
            tl.store(pair_weight_ptr + base + TOP_K + offs_s, tl.full([S_P2], 1.0, tl.float32), mask=s_mask)


if triton is not None:
    from .fused_moe import _align_body, align_buffers

    @triton.jit
    def _router_partial_kernel(x_ptr, w_ptr, partial_ptr, stride_x, H: tl.constexpr, E: tl.constexpr,
                               E_P2: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr):
        # program (token, s): fp32 logits over the s-th slice of H, for all experts, in one wide load
        t = tl.program_id(0).to(tl.int64)
        sp = tl.program_id(1)
        offs_e = tl.arange(0, E_P2)
        offs_h = sp * BLOCK_H + tl.arange(0, BLOCK_H)
        h_mask = offs_h < H
        xh = tl.load(x_ptr + t * stride_x + offs_h, mask=h_mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_e[:, None] * H + offs_h[None, :], mask=(offs_e[:, None] < E) & h_mask[None, :], other=0.0)
        part = tl.sum(w.to(tl.float32) * xh[None, :], axis=1)
        tl.store(partial_ptr + (t * SPLIT + sp) * E_P2 + offs_e, part)

    @triton.jit
    def _route_align_kernel(partial_ptr, bias_ptr, pair_expert_ptr, pair_weight_ptr, sorted_pair_ptr, block_expert_ptr,
                            shift_ptr, n_tokens, scaling,
                            E: tl.constexpr, E_P2: tl.constexpr, T_P2: tl.constexpr, SPLIT: tl.constexpr,
                            TOP_K: tl.constexpr, N_SHARED: tl.constexpr, S_P2: tl.constexpr, NORM: tl.constexpr,
                            E_ALL: tl.constexpr, P_P2: tl.constexpr, EA_P2: tl.constexpr, ROWS: tl.constexpr,
                            NB: tl.constexpr, NB_P2: tl.constexpr, BLOCK_M: tl.constexpr, FILL: tl.constexpr):
        # One program for the whole step: every token's logits (the partial sums, in a fixed order),
        # top-k as in _router_kernel, vectorised over tokens; the pairs written; then the alignment.
        offs_t = tl.arange(0, T_P2)
        offs_e = tl.arange(0, E_P2)
        tm = offs_t < n_tokens
        em = offs_e < E
        acc = tl.zeros([T_P2, E_P2], dtype=tl.float32)
        for sp in tl.static_range(SPLIT):
            ptrs = partial_ptr + (offs_t[:, None].to(tl.int64) * SPLIT + sp) * E_P2 + offs_e[None, :]
            acc += tl.load(ptrs, mask=tm[:, None], other=0.0)
        scores = 1.0 / (1.0 + tl.exp(-acc))
        bias = tl.load(bias_ptr + offs_e, mask=em, other=0.0)
        choice = tl.where(em[None, :], scores + bias[None, :], float("-inf"))
        sel = (offs_t[:, None] + offs_e[None, :]) < 0
        for _ in tl.static_range(TOP_K):
            best = tl.max(choice, axis=1)
            pick = tl.min(tl.where(choice == best[:, None], offs_e[None, :], E_P2), axis=1)
            hit = offs_e[None, :] == pick[:, None]
            sel = sel | hit
            choice = tl.where(hit, float("-inf"), choice)
        wts = tl.where(sel, scores, 0.0)
        if NORM:
            wts = wts / (tl.sum(wts, axis=1)[:, None] + 1e-20)
        wts = wts * scaling
        slot = tl.cumsum(sel.to(tl.int32), axis=1) - 1
        base = offs_t[:, None] * (TOP_K + N_SHARED)
        keep = sel & tm[:, None]
        tl.store(pair_expert_ptr + base + slot, (offs_e[None, :] + offs_t[:, None] * 0).to(tl.int64), mask=keep)
        tl.store(pair_weight_ptr + base + slot, wts, mask=keep)
        if N_SHARED > 0:
            offs_s = tl.arange(0, S_P2)
            sm = tm[:, None] & (offs_s[None, :] < N_SHARED)
            tl.store(pair_expert_ptr + base + TOP_K + offs_s[None, :], (E + offs_s[None, :] + offs_t[:, None] * 0).to(tl.int64), mask=sm)
            tl.store(pair_weight_ptr + base + TOP_K + offs_s[None, :], tl.full([T_P2, S_P2], 1.0, tl.float32), mask=sm)
        tl.debug_barrier()
        _align_body(pair_expert_ptr, sorted_pair_ptr, block_expert_ptr, shift_ptr, n_tokens * (TOP_K + N_SHARED),
                    E_ALL, P_P2, EA_P2, ROWS, NB, NB_P2, BLOCK_M, FILL)

    # One program streams the whole gate weight (256 KB for the lite shape): few, wide loads matter more
    # than occupancy (16 serial 16 KB loads took 9-13 us on an H100). Autotuned once per shape, with
    # do_bench's L2 flush between runs, as in a decode step where the experts have evicted it.
    def _router_configs():
        if _INTERPRET:
            return [triton.Config({"BLOCK_H": 32}, num_warps=4)]
        return [triton.Config({"BLOCK_H": bh}, num_warps=w) for bh in (128, 256, 512, 1024) for w in (4, 8, 16)
                if bh * 64 // (32 * w) <= 512]

    _router_tuned = triton.autotune(_router_configs(), key=["H", "E"], do_bench=autotune_bench)(_router_kernel)


def route_pairs(x: torch.Tensor, gate_weight: torch.Tensor, bias: torch.Tensor, top_k: int, norm_topk_prob: bool,
                scaling: float, n_shared: int, block_h: int | None = None, num_warps: int = 8):
    """The kernel: x [T, H] (model dtype), gate_weight [E, H] (any float dtype, contiguous), bias [E] fp32.
    block_h None: the autotuned configuration; else that block width and num_warps."""
    t, h = x.shape
    e = gate_weight.shape[0]
    assert x.stride(-1) == 1 and gate_weight.is_contiguous() and bias.dtype == torch.float32
    per_tok = top_k + n_shared
    pair_expert = torch.empty(t * per_tok, dtype=torch.long, device=x.device)
    pair_weight = torch.empty(t * per_tok, dtype=torch.float32, device=x.device)
    kw = dict(H=h, E=e, E_P2=triton.next_power_of_2(e), TOP_K=top_k, N_SHARED=n_shared,
              S_P2=max(1, triton.next_power_of_2(max(1, n_shared))), NORM=bool(norm_topk_prob))
    args = (x, gate_weight, bias, pair_expert, pair_weight, x.stride(0), float(scaling))
    if block_h is None:
        _router_tuned[(t,)](*args, **kw)
    else:
        _router_kernel[(t,)](*args, **kw, BLOCK_H=block_h, num_warps=num_warps)
    return pair_expert, pair_weight


ROUTE_ALIGN_MAX_TOKENS = 32  # used up to here: on an H100 at 64 tokens the one-program top-k was slower (17 us vs 14)
ROUTE_ALIGN_LIMIT = 64  # tested (interpreter, device) up to here


def route_and_align(x: torch.Tensor, gate_weight: torch.Tensor, bias: torch.Tensor, top_k: int, norm_topk_prob: bool,
                    scaling: float, n_shared: int, block_h: int = 256):
    """Routing and the expert alignment in two launches: the gate GEMV split over (token, H slice)
    programs (fp32 partial logits), then one program that sums them in order, takes each token's top-k
    and aligns the pairs. Returns (pair_expert, pair_weight, sorted_pair, block_expert) as
    route_pairs + moe_align would (routed pairs in increasing expert id, then the shared slices)."""
    t, h = x.shape
    e = gate_weight.shape[0]
    assert t <= ROUTE_ALIGN_LIMIT and x.stride(-1) == 1 and gate_weight.is_contiguous()
    block_h = min(block_h, triton.next_power_of_2(h))
    split = triton.cdiv(h, block_h)
    e_p2 = triton.next_power_of_2(e)
    per_tok = top_k + n_shared
    dev = x.device
    partial = torch.empty(t, split, e_p2, dtype=torch.float32, device=dev)
    _router_partial_kernel[(t, split)](x, gate_weight, partial, x.stride(0), H=h, E=e, E_P2=e_p2, BLOCK_H=block_h,
                                       SPLIT=split, num_warps=4)
    pair_expert = torch.empty(t * per_tok, dtype=torch.long, device=dev)
    pair_weight = torch.empty(t * per_tok, dtype=torch.float32, device=dev)
    sorted_pair, block_expert, shift, meta = align_buffers(t * per_tok, e + n_shared, dev)
    meta["E_ALL"], meta["EA_P2"] = meta.pop("E"), meta.pop("E_P2")
    _route_align_kernel[(1,)](partial, bias, pair_expert, pair_weight, sorted_pair, block_expert, shift, t, float(scaling),
                              E=e, E_P2=e_p2, T_P2=max(16, triton.next_power_of_2(t)), SPLIT=split, TOP_K=top_k,
                              N_SHARED=n_shared, S_P2=max(1, triton.next_power_of_2(max(1, n_shared))),
                              NORM=bool(norm_topk_prob), **meta, num_warps=4)
    return pair_expert, pair_weight, sorted_pair, block_expert
