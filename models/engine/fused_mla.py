"""The decode attention prologue in one kernel: latent norm, both ropes, the cache row written in place.

After the fused q|kv_a GEMM, a decode step of MLA needs: rms_norm of the kv latent, rope of the key's rope
part and of every head's query rope part, the cache row [latent | roped key] written at (slot b, pos[b]).
As separate kernels that was ~6 launches a layer (two rope kernels, a norm, a cat, the flat index and
index_copy); here it is one program per token. Same arithmetic as kernels.rms_norm / apply_rope compiled
by Inductor (fp32 inside, one rounding to the model dtype; the norm's weight applied to the rounded value).
`mla_prologue_reference` is the PyTorch path it replaces (CPU, and the benchmark's check).
"""

from __future__ import annotations

import math

import torch

from . import kernels as K
from .triton_support import INTERPRET as _INTERPRET
from .triton_support import autotune_bench, available, tl, triton  # noqa: F401  (available: the module's test)


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
    def _rope(src, dst, offs, mask, c, s, HALF: tl.constexpr, INTERLEAVE: tl.constexpr):
        """One rope part rotated (kernels.apply_rope): its pairs at src (interleaved, or the two halves) written
        de-interleaved at dst (first the rotated even dims, then the odd ones), fp32 inside, one rounding."""
        if INTERLEAVE:
            x1 = tl.load(src + 2 * offs, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(src + 2 * offs + 1, mask=mask, other=0.0).to(tl.float32)
        else:
            x1 = tl.load(src + offs, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(src + HALF + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dst + offs, (x1 * c - x2 * s).to(dst.dtype.element_ty), mask=mask)
        tl.store(dst + HALF + offs, (x2 * c + x1 * s).to(dst.dtype.element_ty), mask=mask)

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
        # the key's rope part, into the cache row
        offs_h = tl.arange(0, HALF)
        c = tl.load(cos_ptr + b * HALF + offs_h).to(tl.float32)
        s = tl.load(sin_ptr + b * HALF + offs_h).to(tl.float32)
        _rope(kv_ptr + b * stride_kv + RANK, row + RANK, offs_h, offs_h < HALF, c, s, HALF, INTERLEAVE)
        # every head's query rope part
        heads = tl.arange(0, HEADS_P2)
        hm = (heads < HEADS)[:, None] & (offs_h < HALF)[None, :]
        _rope(q_ptr + b * stride_q + heads[:, None] * (NOPE + ROPE) + NOPE,
              q_rope_ptr + (b * HEADS + heads[:, None]) * ROPE, offs_h[None, :], hm, c[None, :], s[None, :], HALF,
              INTERLEAVE)


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


# ---- prefill's query: the rope part rotated and the whole query written in one pass ---------------------------
#
# A prefill chunk's SDPA wants q = [q_nope | roped q_rope] per head, contiguous. As PyTorch ops that is the compiled
# rope (dynamic shapes: ~291 us a layer at 32K tokens on an H100, ~6x its bytes' time) and a cat (~230 us); here one
# pass, ~142 us a layer: the 32K prefill 0.576-0.583 s against 0.588-0.597 (benchmarks/ENGINE_NOTES.md).

def prefill_query_reference(q, cos, sin, nope, interleave, kk=K.eager):
    """q [B, C, heads, nope + rope] (the projection's query, unroped), cos/sin [C, rope/2] -> the whole query with
    its rope part rotated (de-interleaved, as kernels.apply_rope writes it), contiguous: what MLAAttention's prefill
    computes without the kernel, the kernel's test oracle."""
    q_rope = kk.apply_rope(q[..., nope:], cos.unsqueeze(-2), sin.unsqueeze(-2), interleave)
    return torch.cat([q[..., :nope], q_rope], dim=-1)


if triton is not None:

    @triton.jit
    def _prefill_query_kernel(q_ptr, cos_ptr, sin_ptr, out_ptr, stride_q, chunk,
                              HEADS: tl.constexpr, BLOCK_H: tl.constexpr, NOPE: tl.constexpr, NOPE_P2: tl.constexpr,
                              ROPE: tl.constexpr, HALF_P2: tl.constexpr, INTERLEAVE: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)  # a token of the [B, C] chunk
        D: tl.constexpr = NOPE + ROPE
        HALF: tl.constexpr = ROPE // 2
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        hm = (heads < HEADS)[:, None]
        src = q_ptr + t * stride_q + heads[:, None] * D
        dst = out_ptr + t * (HEADS * D) + heads[:, None] * D
        offs_n = tl.arange(0, NOPE_P2)
        nm = hm & (offs_n < NOPE)[None, :]
        tl.store(dst + offs_n[None, :], tl.load(src + offs_n[None, :], mask=nm, other=0.0), mask=nm)
        offs_h = tl.arange(0, HALF_P2)
        km = offs_h < HALF
        pos = t % chunk
        c = tl.load(cos_ptr + pos * HALF + offs_h, mask=km, other=0.0).to(tl.float32)[None, :]
        s = tl.load(sin_ptr + pos * HALF + offs_h, mask=km, other=0.0).to(tl.float32)[None, :]
        _rope(src + NOPE, dst + NOPE, offs_h[None, :], hm & km[None, :], c, s, HALF, INTERLEAVE)


def prefill_query(q, cos, sin, nope, interleave):
    """prefill_query_reference in one Triton pass (fp32 rope inside, one rounding, as the compiled rope): one
    program per token and block of up to 16 heads."""
    b, c, heads, d = q.shape
    rope = d - nope
    assert q.stride(-1) == 1 and q.stride(-2) == d and q.stride(0) == c * q.stride(1) and rope % 2 == 0
    assert cos.is_contiguous() and sin.is_contiguous() and cos.shape == (c, rope // 2)
    out = torch.empty(b, c, heads, d, dtype=q.dtype, device=q.device)
    if b * c:
        block_h = min(16, triton.next_power_of_2(heads))
        _prefill_query_kernel[(b * c, triton.cdiv(heads, block_h))](q, cos, sin, out, q.stride(1), c, HEADS=heads,
                                        BLOCK_H=block_h, NOPE=nope,
                                        NOPE_P2=triton.next_power_of_2(nope), ROPE=rope,
                                        HALF_P2=triton.next_power_of_2(rope // 2), INTERLEAVE=bool(interleave),
                                        num_warps=4)
    return out


# ---- absorbed decode attention: scores over the latent cache, softmax and P . latent in one pass ----------
#
# Per decode row b (its own cache slot) and every head h: s[h, j] = q_lat[h] . latent[j] + q_rope[h] . k_rope[j]
# over keys j <= pos[b] (and < the sequence bucket), p = softmax(scale * s), o_lat[h] = sum_j p[h, j] latent[j].
# As PyTorch ops that is a cat, a bmm for the scores, the masked softmax and a bmm for P . latent: four launches
# and two reads of the cache rows. Here (flash-decoding): the keys are cut into splits, one program per
# (row, split) streams its keys once with an online softmax (fp32 scores, no rounding of s to the model dtype)
# and writes a partial [heads, r] with its max and sum; one program per (row, head) combines the partials.

def latent_attention_reference(q_lat, q_rope, kv, pos, scale):
    """q_lat [B, heads, r], q_rope [B, heads, dr], kv [B, S, r + dr] (each row's slot), pos [B] ->
    o_lat [B, heads, r] in q_lat's dtype: softmax over keys 0..min(pos, S - 1), fp32 inside."""
    r = q_lat.shape[-1]
    s = kv.shape[1]
    q = torch.cat([q_lat, q_rope], dim=-1).float()
    scores = torch.bmm(q, kv.float().transpose(1, 2)) * scale
    keep = torch.arange(s, device=kv.device)[None, None, :] <= pos[:, None, None]
    probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.bmm(probs, kv[..., :r].float()).to(q_lat.dtype)


def latent_attention_available(device: torch.device, heads: int, rank: int, rope: int) -> bool:
    return available(device) and heads <= 64 and rank <= 1024 and rope <= 128


def latent_splits(batch: int, seq: int, block_s: int = 32, target_programs: int = 264) -> tuple[int, int]:
    """(keys per split, number of splits) for a (batch, sequence) bucket: enough programs to fill the GPU
    (~2 per SM of an H100) while a split keeps at least 64 keys."""
    n = max(1, min(max(1, seq // 64), -(-target_programs // batch)))
    per = -(-seq // n)
    per = -(-per // block_s) * block_s
    return per, -(-seq // per)


if triton is not None:

    @triton.jit
    def _online_softmax_block(ql, qr, rows, offs_r, rm, offs_d, dm, sm, keep, scale, m_i, l_i, acc, R: tl.constexpr):
        """One block of keys folded into a flash pass: rows [BLOCK_S, 1] point at cache rows [latent | rope key],
        sm [BLOCK_S] marks the keys that exist, keep [M or 1, BLOCK_S] those each query row attends; returns the
        running max, sum and weighted latent (m_i, l_i, acc) with the block added (fp32 scores)."""
        lat = tl.load(rows + offs_r[None, :], mask=sm[:, None] & rm[None, :], other=0.0)
        kr = tl.load(rows + R + offs_d[None, :], mask=sm[:, None] & dm[None, :], other=0.0)
        s = tl.dot(ql, tl.trans(lat)) + tl.dot(qr, tl.trans(kr))
        s = tl.where(keep, s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: nothing to rescale
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + tl.dot(p.to(lat.dtype), lat)

    @triton.jit
    def _latent_attn_split_kernel(ql_ptr, qr_ptr, kv_ptr, pos_ptr, part_ptr, ml_ptr,
                                  stride_qlb, stride_qlh, stride_qrb, stride_qrh, stride_kvb, stride_kvs, seq, scale,
                                  H: tl.constexpr, H_P2: tl.constexpr, R: tl.constexpr, R_P2: tl.constexpr,
                                  DR: tl.constexpr, DR_P2: tl.constexpr, SPLIT: tl.constexpr, NSPLIT: tl.constexpr,
                                  BLOCK_S: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        sp = tl.program_id(1)
        n_keys = tl.minimum(tl.load(pos_ptr + b) + 1, seq)
        start = sp * SPLIT
        end = tl.minimum(start + SPLIT, n_keys)
        heads = tl.arange(0, H_P2)
        hm = heads < H
        offs_r = tl.arange(0, R_P2)
        rm = offs_r < R
        offs_d = tl.arange(0, DR_P2)
        dm = offs_d < DR
        m_i = tl.full([H_P2], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([H_P2], dtype=tl.float32)
        acc = tl.zeros([H_P2, R_P2], dtype=tl.float32)
        if start < end:
            ql = tl.load(ql_ptr + b * stride_qlb + heads[:, None] * stride_qlh + offs_r[None, :],
                         mask=hm[:, None] & rm[None, :], other=0.0)
            qr = tl.load(qr_ptr + b * stride_qrb + heads[:, None] * stride_qrh + offs_d[None, :],
                         mask=hm[:, None] & dm[None, :], other=0.0)
            base = kv_ptr + b * stride_kvb
            for s0 in range(start, end, BLOCK_S):
                offs_s = s0 + tl.arange(0, BLOCK_S)
                sm = offs_s < end
                rows = base + offs_s[:, None].to(tl.int64) * stride_kvs
                m_i, l_i, acc = _online_softmax_block(ql, qr, rows, offs_r, rm, offs_d, dm, sm, sm[None, :], scale,
                                                      m_i, l_i, acc, R)
        row = b * NSPLIT + sp
        tl.store(part_ptr + row * H_P2 * R_P2 + heads[:, None] * R_P2 + offs_r[None, :], acc)
        tl.store(ml_ptr + row * 2 * H_P2 + heads, m_i)
        tl.store(ml_ptr + row * 2 * H_P2 + H_P2 + heads, l_i)

    @triton.jit
    def _latent_attn_combine_kernel(part_ptr, ml_ptr, out_ptr, H: tl.constexpr, H_P2: tl.constexpr, R: tl.constexpr,
                                    R_P2: tl.constexpr, NSPLIT: tl.constexpr, NSPLIT_P2: tl.constexpr):
        # one program per (row, head): at batch 1 a single program per row read every split's [heads, r]
        # partial alone (~1 MB at 32 splits: 23 us a layer on an H100)
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        offs_sp = tl.arange(0, NSPLIT_P2)
        spm = offs_sp < NSPLIT
        rows = b * NSPLIT + offs_sp
        ms = tl.load(ml_ptr + rows * 2 * H_P2 + h, mask=spm, other=float("-inf"))
        ls = tl.load(ml_ptr + rows * 2 * H_P2 + H_P2 + h, mask=spm, other=0.0)
        m = tl.max(ms, axis=0)  # split 0 always holds key 0: finite
        total = tl.sum(tl.exp(ms - m) * ls, axis=0)  # an empty split (max -inf) weighs 0
        offs_r = tl.arange(0, R_P2)
        acc = tl.zeros([R_P2], dtype=tl.float32)
        for sp in range(NSPLIT):
            row = b * NSPLIT + sp
            w = tl.exp(tl.load(ml_ptr + row * 2 * H_P2 + h) - m)
            acc += w * tl.load(part_ptr + (row * H_P2 + h) * R_P2 + offs_r)
        tl.store(out_ptr + (b * H + h) * R + offs_r, (acc / total).to(out_ptr.dtype.element_ty), mask=offs_r < R)


def latent_attention(q_lat, q_rope, kv, pos, scale, block_s: int = 32):
    """The two kernels; same arguments and result as latent_attention_reference. kv may be a strided view
    (cache[:B, :S]); q_lat / q_rope any layout with a unit last stride."""
    bsz, heads, r = q_lat.shape
    dr = q_rope.shape[-1]
    seq = kv.shape[1]
    assert q_lat.stride(-1) == 1 and q_rope.stride(-1) == 1 and kv.stride(-1) == 1 and kv.shape[-1] == r + dr
    split, nsplit = latent_splits(bsz, seq, block_s)
    h_p2, r_p2, d_p2 = (max(16, triton.next_power_of_2(v)) for v in (heads, r, dr))
    part = torch.empty(bsz * nsplit * h_p2 * r_p2, dtype=torch.float32, device=kv.device)
    ml = torch.empty(bsz * nsplit * 2 * h_p2, dtype=torch.float32, device=kv.device)
    _latent_attn_split_kernel[(bsz, nsplit)](
        q_lat, q_rope, kv, pos, part, ml, q_lat.stride(0), q_lat.stride(1), q_rope.stride(0), q_rope.stride(1),
        kv.stride(0), kv.stride(1), seq, float(scale), H=heads, H_P2=h_p2, R=r, R_P2=r_p2, DR=dr, DR_P2=d_p2,
        SPLIT=split, NSPLIT=nsplit, BLOCK_S=block_s, num_warps=4, num_stages=2)
    out = torch.empty(bsz, heads, r, dtype=q_lat.dtype, device=q_lat.device)
    _latent_attn_combine_kernel[(bsz, heads)](part, ml, out, H=heads, H_P2=h_p2, R=r, R_P2=r_p2, NSPLIT=nsplit,
                                              NSPLIT_P2=max(2, triton.next_power_of_2(nsplit)), num_warps=4)
    return out


# ---- a packed step's prompt pieces: each query over its own slot, causal, in one flash pass -------------
#
# A packed step's pieces (mixed_batch.PackedStep) have C query rows x heads; each piece row reads its own slot's
# cache rows (multi-query in the absorbed form: every head of every query reads the same [latent | rope key]
# rows), each query up to its own position. As PyTorch ops that is a cat, a [C*heads x S] scores bmm, the masked
# softmax over it and a P . latent bmm: the scores are written and read three times (2.4 ms of a 22 ms step at
# C 512, S 2,048 on an H100). Here one program per block of (query, head) rows streams its slot's keys once with
# an online softmax (fp32 scores), up to its rows' last position, so a piece early in its prompt reads few keys.
# A block never straddles two pieces (pieces start at multiples of `piece_align` rows), so its rows share one
# slot. Padding rows (base -1) read nothing and give zeros.

# (BLOCK_M, BLOCK_S, warps, stages) the piece kernel is autotuned over on a GPU; every BLOCK_M divides 64, which
# piece_align relies on
PIECE_TILES = ((32, 32, 4, 2), (32, 64, 4, 2), (64, 32, 8, 2), (64, 64, 8, 2), (32, 32, 8, 1), (16, 64, 4, 2))


def piece_align(heads: int) -> int:
    """Query rows a piece's start is aligned to: a multiple of every block of (query, head) rows the kernel may
    take (16, 32 or 64 rows) starts a piece, so no block holds two slots."""
    return 64 // math.gcd(heads, 64)


def piece_attention_reference(q_lat, q_rope, kv, pos, base, scale):
    """q_lat [C, heads, r], q_rope [C, heads, dr], kv [rows, r + dr] (a layer's cache, slots flattened), pos [C],
    base [C] (each row's slot * max_seq_len; -1: a padding row) -> o_lat [C, heads, r] in q_lat's dtype: each real
    row softmax over its slot's keys 0..pos, fp32 inside; padding rows zero."""
    r = q_lat.shape[-1]
    out = torch.zeros_like(q_lat)
    q = torch.cat([q_lat, q_rope], dim=-1).float()
    for b in base[base >= 0].unique().tolist():  # one piece (slot) at a time
        rows = (base == b).nonzero()[:, 0]
        n_keys = int(pos[rows].max()) + 1
        keys = kv[b : b + n_keys].float()
        scores = torch.einsum("chd,sd->chs", q[rows], keys) * scale
        keep = torch.arange(n_keys, device=kv.device)[None, None, :] <= pos[rows, None, None]
        probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        out[rows] = torch.einsum("chs,sr->chr", probs, keys[:, :r]).to(q_lat.dtype)
    return out


def piece_attention_available(device: torch.device, rank: int, rope: int) -> bool:
    return available(device) and rank <= 1024 and rope <= 128


if triton is not None:

    def _piece_configs():
        if _INTERPRET:
            return [triton.Config({"BLOCK_M": 16, "BLOCK_S": 16}, num_warps=4, num_stages=1)]
        return [triton.Config({"BLOCK_M": m, "BLOCK_S": s}, num_warps=w, num_stages=st) for m, s, w, st in PIECE_TILES]

    @triton.autotune(configs=_piece_configs(), key=["H", "R", "DR", "N_ROWS"], do_bench=autotune_bench)
    @triton.jit
    def _piece_attn_kernel(ql_ptr, qr_ptr, kv_ptr, pos_ptr, base_ptr, out_ptr,
                           stride_qlc, stride_qlh, stride_qrc, stride_qrh, stride_kvs, scale,
                           N_ROWS, H: tl.constexpr, R: tl.constexpr, R_P2: tl.constexpr, DR: tl.constexpr,
                           DR_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
        # rows are (query, head) pairs, query-major: row m is query m // H, head m % H
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        qi = offs_m // H
        hi = offs_m % H
        base = tl.load(base_ptr + qi, mask=offs_m < N_ROWS, other=-1)
        real = base >= 0
        pos = tl.load(pos_ptr + qi, mask=real, other=-1)
        n_keys = tl.where(real, pos + 1, 0)  # keys each row reads; padding rows none
        block_keys = tl.max(n_keys, axis=0)
        slot_base = tl.max(base, axis=0).to(tl.int64)  # one slot a block (pieces are aligned to whole blocks)
        offs_r = tl.arange(0, R_P2)
        rm = offs_r < R
        offs_d = tl.arange(0, DR_P2)
        dm = offs_d < DR
        ql = tl.load(ql_ptr + qi[:, None].to(tl.int64) * stride_qlc + hi[:, None] * stride_qlh + offs_r[None, :],
                     mask=real[:, None] & rm[None, :], other=0.0)
        qr = tl.load(qr_ptr + qi[:, None].to(tl.int64) * stride_qrc + hi[:, None] * stride_qrh + offs_d[None, :],
                     mask=real[:, None] & dm[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, R_P2], dtype=tl.float32)
        for s0 in range(0, block_keys, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            sm = offs_s < block_keys
            rows = kv_ptr + (slot_base + offs_s[:, None].to(tl.int64)) * stride_kvs
            m_i, l_i, acc = _online_softmax_block(ql, qr, rows, offs_r, rm, offs_d, dm, sm,
                                                  offs_s[None, :] < n_keys[:, None], scale, m_i, l_i, acc, R)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows: acc and l are 0, the output 0
        tl.store(out_ptr + offs_m[:, None].to(tl.int64) * R + offs_r[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(offs_m < N_ROWS)[:, None] & rm[None, :])


def piece_attention(q_lat, q_rope, kv, pos, base, scale):
    """The kernel; same arguments and result as piece_attention_reference. Each piece's rows must start at a
    multiple of piece_align(heads) (PackedStep.placement does). kv may be a strided view; q_lat / q_rope any
    layout with a unit last stride."""
    c, heads, r = q_lat.shape
    dr = q_rope.shape[-1]
    assert q_lat.stride(-1) == 1 and q_rope.stride(-1) == 1 and kv.stride(-1) == 1 and kv.shape[-1] == r + dr
    out = torch.empty(c, heads, r, dtype=q_lat.dtype, device=q_lat.device)
    n_rows = c * heads
    _piece_attn_kernel[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
        q_lat, q_rope, kv, pos, base, out, q_lat.stride(0), q_lat.stride(1), q_rope.stride(0), q_rope.stride(1),
        kv.stride(0), float(scale), n_rows, H=heads, R=r, R_P2=max(16, triton.next_power_of_2(r)),
        DR=dr, DR_P2=max(16, triton.next_power_of_2(dr)))
    return out


def tune_piece_attention(heads: int, rank: int, rope: int, chunks, seq: int, dtype, device, scale: float) -> None:
    """Autotune piece_attention for each piece-area size on a representative piece (the last c tokens of a slot
    of `seq` keys, all real) before the packed graphs are captured: the captures' own warm-up steps carry no
    piece (every row padding), and the autotuner would pick its tiles on that."""
    if not piece_attention_available(torch.device(device), rank, rope):
        return
    g = torch.Generator(device=device).manual_seed(0)
    for c in chunks:
        s = max(seq, c)
        kv = torch.randn(s, rank + rope, device=device, dtype=dtype, generator=g)
        q_lat = torch.randn(c, heads, rank, device=device, dtype=dtype, generator=g)
        q_rope = torch.randn(c, heads, rope, device=device, dtype=dtype, generator=g)
        piece_attention(q_lat, q_rope, kv, torch.arange(s - c, s, device=device),
                        torch.zeros(c, dtype=torch.long, device=device), scale)
