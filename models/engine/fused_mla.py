"""The decode attention prologue in one kernel: latent norm, both ropes, the cache row written in place.

After the fused q|kv_a GEMM, a decode step of MLA needs: rms_norm of the kv latent, rope of the key's rope
part and of every head's query rope part, the cache row [latent | roped key] written at (slot b, pos[b]).
As separate kernels that was ~6 launches a layer (two rope kernels, a norm, a cat, the flat index and
index_copy); here it is one program per token. Same arithmetic as kernels.rms_norm / apply_rope compiled
by Inductor (fp32 inside, one rounding to the model dtype; the norm's weight applied to the rounded value).
`mla_prologue_reference` is the PyTorch path it replaces (CPU, and the benchmark's check).
"""

from __future__ import annotations

import torch

from . import kernels as K
from .triton_support import available, tl, triton  # noqa: F401  (available: the module's test)


def mla_prologue_reference(q, kv, cos, sin, norm_w, eps, cache, pos, heads, nope, rope, rank, interleave, kk=K.eager):
    """q [B, heads*(nope+rope)], kv [B, rank+rope] -> q_rope [B, heads, rope]; writes cache[b, pos[b]]."""
    b = q.shape[0]
    q_rope = q.view(b, heads, nope + rope)[..., nope:]
    q_rope = kk.apply_rope(q_rope, cos.unsqueeze(-2), sin.unsqueeze(-2), interleave)
    latent = kk.rms_norm(kv[..., :rank], norm_w, eps)
    k_rope = kk.apply_rope(kv[..., rank:], cos, sin, interleave)
    rows = torch.cat([latent, k_rope], dim=-1)
    flat = torch.arange(b, device=q.device) * cache.shape[1] + pos
    cache.view(-1, cache.shape[-1]).index_copy_(0, flat, rows)
    return q_rope


if triton is not None:

    @triton.jit
    def _mla_prologue_kernel(q_ptr, kv_ptr, cos_ptr, sin_ptr, norm_w_ptr, pos_ptr, cache_ptr, q_rope_ptr,
                             stride_q, stride_kv, stride_cs, eps,
                             HEADS: tl.constexpr, HEADS_P2: tl.constexpr, NOPE: tl.constexpr, ROPE: tl.constexpr,
                             RANK: tl.constexpr, RANK_P2: tl.constexpr, INTERLEAVE: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + b).to(tl.int64)
        LATENT: tl.constexpr = RANK + ROPE
        HALF: tl.constexpr = ROPE // 2
        row = cache_ptr + b * stride_cs + pos * LATENT
        # latent: rms norm (fp32 statistics), weight times the value rounded to the model dtype
        offs_r = tl.arange(0, RANK_P2)
        rm = offs_r < RANK
        kv = tl.load(kv_ptr + b * stride_kv + offs_r, mask=rm, other=0.0).to(tl.float32)
        var = tl.sum(kv * kv, axis=0) / RANK
        normed = (kv * tl.rsqrt(var + eps)).to(cache_ptr.dtype.element_ty)
        w = tl.load(norm_w_ptr + offs_r, mask=rm, other=0.0)
        tl.store(row + offs_r, (w.to(tl.float32) * normed.to(tl.float32)).to(cache_ptr.dtype.element_ty), mask=rm)
        # rope: de-interleaved output (first the rotated even dims, then the odd ones)
        offs_h = tl.arange(0, HALF)
        c = tl.load(cos_ptr + b * HALF + offs_h).to(tl.float32)
        s = tl.load(sin_ptr + b * HALF + offs_h).to(tl.float32)
        kr = kv_ptr + b * stride_kv + RANK
        if INTERLEAVE:
            x1 = tl.load(kr + 2 * offs_h).to(tl.float32)
            x2 = tl.load(kr + 2 * offs_h + 1).to(tl.float32)
        else:
            x1 = tl.load(kr + offs_h).to(tl.float32)
            x2 = tl.load(kr + HALF + offs_h).to(tl.float32)
        tl.store(row + RANK + offs_h, (x1 * c - x2 * s).to(cache_ptr.dtype.element_ty))
        tl.store(row + RANK + HALF + offs_h, (x2 * c + x1 * s).to(cache_ptr.dtype.element_ty))
        # every head's query rope part
        heads = tl.arange(0, HEADS_P2)
        hm = (heads < HEADS)[:, None]
        qr = q_ptr + b * stride_q + heads[:, None] * (NOPE + ROPE) + NOPE
        if INTERLEAVE:
            q1 = tl.load(qr + 2 * offs_h[None, :], mask=hm, other=0.0).to(tl.float32)
            q2 = tl.load(qr + 2 * offs_h[None, :] + 1, mask=hm, other=0.0).to(tl.float32)
        else:
            q1 = tl.load(qr + offs_h[None, :], mask=hm, other=0.0).to(tl.float32)
            q2 = tl.load(qr + HALF + offs_h[None, :], mask=hm, other=0.0).to(tl.float32)
        out = q_rope_ptr + (b * HEADS + heads[:, None]) * ROPE
        tl.store(out + offs_h[None, :], (q1 * c[None, :] - q2 * s[None, :]).to(q_rope_ptr.dtype.element_ty), mask=hm)
        tl.store(out + HALF + offs_h[None, :], (q2 * c[None, :] + q1 * s[None, :]).to(q_rope_ptr.dtype.element_ty), mask=hm)


def mla_prologue(q, kv, cos, sin, norm_w, eps, cache, pos, heads, nope, rope, rank, interleave):
    """The kernel; same arguments and result as mla_prologue_reference. cos/sin: [B, rope/2] contiguous."""
    b = q.shape[0]
    assert q.stride(-1) == 1 and kv.stride(-1) == 1 and cos.is_contiguous() and sin.is_contiguous()
    assert cache.is_contiguous() and cache.shape[-1] == rank + rope and rope % 2 == 0
    q_rope = torch.empty(b, heads, rope, dtype=q.dtype, device=q.device)
    _mla_prologue_kernel[(b,)](q, kv, cos, sin, norm_w, pos, cache, q_rope, q.stride(0), kv.stride(0),
                               cache.stride(0), float(eps), HEADS=heads, HEADS_P2=triton.next_power_of_2(heads),
                               NOPE=nope, ROPE=rope, RANK=rank, RANK_P2=triton.next_power_of_2(rank),
                               INTERLEAVE=bool(interleave), num_warps=4)
    return q_rope
