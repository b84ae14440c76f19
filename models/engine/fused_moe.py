"""The fused MoE step for small token counts (decode, short pieces): routed and shared experts in two kernels.

Every token is a row of `pairs_per_token` (token, expert) pairs: its top-k routed experts (weight =
routing weight) and, where the shared MLP's width is a multiple of a routed expert's, the shared MLP
cut into `n_shared` expert-sized slices (weight 1.0; SwiGLU is per intermediate unit, so slices add up
to the shared MLP exactly). Pairs are grouped by expert into blocks of BLOCK_M rows, each expert's
group padded to a whole block (vLLM's moe_align_block_size), with no host sync: the block count has
a fixed upper bound for a token count, so the launch is CUDA-graph safe.

Two Triton kernels then read every touched expert's weights once per block of its rows:
- `gate_up`: h[row] = silu(x[tok] @ W_gate[e]^T) * (x[tok] @ W_up[e]^T), rows in block order;
- `down`:    y[pair] = weight[pair] * (h[row] @ W_down[e]^T) in fp32, written at the pair's place;
then out[tok] = residual + sum over the token's pairs (one fused elementwise kernel).

`moe_align` and `fused_moe_reference` are plain PyTorch: the CPU tests run them, the GPU benchmark
compares the kernels against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .triton_support import INTERPRET as _INTERPRET
from .triton_support import autotune_bench, available, tl, triton  # noqa: F401  (available: the module's test)

BLOCK_M = 16  # rows per block for decode-sized steps: a GEMV-like tile, experts see a few rows each
# packed mixed steps (hundreds of tokens, ~130 rows an expert at C 1,024): a GEMM tile. 128 rows over 64: one MoE layer
# at 1,088 tokens 661 against 709 us, serving at 48 req/s 2,765-2,776 against 2,634-2,678 tok/s (H100, two calls
# in either order; benchmarks/ENGINE_NOTES.md). 64 rows stay a step's choice (load_engine(packed_block_m=64)).
BLOCK_M_LARGE = 128


def block_m_for(n_pairs: int, n_experts: int, large: int | None = None) -> int:
    """The block height for a step: BLOCK_M while an expert averages at most BLOCK_M rows, else `large` (default
    BLOCK_M_LARGE: fewer blocks re-reading one expert's weights, and tensor-core tiles that are not mostly padding)."""
    return BLOCK_M if n_pairs <= BLOCK_M * n_experts else (large or BLOCK_M_LARGE)


def max_blocks(n_pairs: int, n_experts: int, block_m: int = BLOCK_M) -> int:
    """Upper bound of padded blocks: sum over experts of ceil(count / block_m)."""
    return -(-n_pairs // block_m) + min(n_experts, n_pairs)


def moe_align(pair_expert: torch.Tensor, n_experts: int, block_m: int = BLOCK_M):
    """pair_expert [P] (int64, < n_experts) -> (sorted_pair [NB * block_m] int32, block_expert [NB] int32).

    sorted_pair lists the pairs grouped by expert, each group padded with the sentinel P to a multiple
    of block_m; block_expert[b] is the expert of rows b*block_m.. (n_experts for unused blocks)."""
    p = pair_expert.numel()
    nb = max_blocks(p, n_experts, block_m)
    experts = torch.arange(n_experts, device=pair_expert.device)
    onehot = (pair_expert[:, None] == experts).long()  # [P, E]
    counts = onehot.sum(0)
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # place among the pairs of the same expert
    row = (ends - padded).gather(0, pair_expert) + rank
    sorted_pair = torch.full((nb * block_m,), p, dtype=torch.long, device=pair_expert.device)
    sorted_pair.scatter_(0, row, torch.arange(p, device=pair_expert.device))
    starts = torch.arange(nb, device=pair_expert.device) * block_m
    block_expert = (starts[:, None] >= ends[None, :]).sum(1)  # searchsorted(ends, starts, right=True)
    return sorted_pair.to(torch.int32), block_expert.to(torch.int32)


def combine(y: torch.Tensor, residual: torch.Tensor | None, n_tokens: int) -> torch.Tensor:
    """residual + sum of each token's weighted pair outputs (y: fp32 [T * pairs_per_token, H])."""
    out = y.view(n_tokens, -1, y.shape[-1]).sum(1)
    out = out.to(residual.dtype if residual is not None else torch.bfloat16)
    return out if residual is None else residual + out


class ExpertWeights:
    """The routed experts' and the shared MLP's weights as the kernels address them (no copies)."""

    def __init__(self, w_gate_up, w_down, shared_gate_up=None, shared_down=None):
        self.w_gate_up, self.w_down = w_gate_up, w_down  # [E, 2I, H], [E, H, I]
        self.n_routed, two_i, self.hidden = w_gate_up.shape
        self.inter = two_i // 2
        self.n_shared = 0
        self.shared_gate_up, self.shared_down = shared_gate_up, shared_down  # [2Is, H], [H, Is]
        if shared_gate_up is not None:
            inter_s = shared_gate_up.shape[0] // 2
            if inter_s % self.inter == 0:
                self.n_shared = inter_s // self.inter
        self.shared_inter = self.n_shared * self.inter

    @property
    def n_experts(self) -> int:
        return self.n_routed + self.n_shared

    def expert(self, e: int):
        """(W_gate, W_up, W_down) of kernel expert e: a routed expert or a slice of the shared MLP."""
        i = self.inter
        if e < self.n_routed:
            return self.w_gate_up[e, :i], self.w_gate_up[e, i:], self.w_down[e]
        j = e - self.n_routed
        gu, d, i_s = self.shared_gate_up, self.shared_down, self.shared_inter
        return gu[j * i : (j + 1) * i], gu[i_s + j * i : i_s + (j + 1) * i], d[:, j * i : (j + 1) * i]


def fused_moe_reference(x, pair_expert, pair_weight, weights: ExpertWeights, residual=None, block_m: int = BLOCK_M):
    """The kernels' computation in PyTorch (alignment, per-block products in fp32, combine)."""
    t = x.shape[0]
    p = pair_expert.numel()
    per_tok = p // t
    sorted_pair, block_expert = moe_align(pair_expert, weights.n_experts, block_m)
    y = torch.zeros(p, weights.hidden, dtype=torch.float32, device=x.device)
    for b, e in enumerate(block_expert.tolist()):
        if e >= weights.n_experts:
            continue
        pairs = sorted_pair[b * block_m : (b + 1) * block_m].long()
        pairs = pairs[pairs < p]
        wg, wu, wd = weights.expert(e)
        xr = x[pairs // per_tok].float()
        h = (F.silu(xr @ wg.float().t()) * (xr @ wu.float().t())).to(x.dtype)
        y[pairs] = (h.float() @ wd.float().t()) * pair_weight[pairs].float()[:, None]
    return combine(y, residual, t) if residual is not None else combine(y, None, t).to(x.dtype)


if triton is not None:

    @triton.jit
    def _expert_block(block_expert_ptr, sorted_pair_ptr, w_ptr, ws_ptr, n_pairs, n_routed, stride_we, shared_step,
                      N: tl.constexpr, INTER: tl.constexpr, SHARED_INTER: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """What both kernels' program (block mb of rows, tile nb of N output columns) starts from: its expert
        e (n_experts for an unused block), its rows and their pairs (valid: not the sentinel), the output
        columns, the expert's weight base (a routed expert: w_ptr + e * stride_we; a shared-MLP slice:
        ws_ptr + (e - n_routed) * shared_step) and the stride between its intermediate units (INTER for a
        routed expert, SHARED_INTER inside the shared MLP's concatenated weights)."""
        mb = tl.program_id(0)
        nb = tl.program_id(1)
        e = tl.load(block_expert_ptr + mb)
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        pair = tl.load(sorted_pair_ptr + rows)
        valid = pair < n_pairs
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        unit_stride = tl.where(e < n_routed, INTER, SHARED_INTER).to(tl.int64)
        if e < n_routed:
            w_base = w_ptr + e.to(tl.int64) * stride_we
        else:
            w_base = ws_ptr + (e - n_routed).to(tl.int64) * shared_step
        return e, rows, pair, valid, offs_n, n_mask, unit_stride, w_base

    @triton.jit
    def _gate_up_kernel(x_ptr, w_ptr, ws_ptr, sorted_pair_ptr, block_expert_ptr, h_ptr,
                        n_pairs, n_blocks, n_routed, n_experts, stride_x, stride_we,
                        PAIRS_PER_TOKEN: tl.constexpr, K: tl.constexpr, INTER: tl.constexpr, SHARED_INTER: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        e, rows, pair, valid, offs_n, n_mask, up_rows, w_base = _expert_block(
            block_expert_ptr, sorted_pair_ptr, w_ptr, ws_ptr, n_pairs, n_routed, stride_we, INTER * K,
            INTER, INTER, SHARED_INTER, BLOCK_M, BLOCK_N)
        if e < n_experts:
            tok = (pair // PAIRS_PER_TOKEN).to(tl.int64)
            g_ptrs = w_base + offs_n[None, :].to(tl.int64) * K
            u_ptrs = g_ptrs + up_rows * K
            x_ptrs = x_ptr + tok[:, None] * stride_x
            acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < K
                xk = tl.load(x_ptrs + offs_k[None, :], mask=valid[:, None] & k_mask[None, :], other=0.0)
                wm = k_mask[:, None] & n_mask[None, :]
                wg = tl.load(g_ptrs + offs_k[:, None], mask=wm, other=0.0)
                wu = tl.load(u_ptrs + offs_k[:, None], mask=wm, other=0.0)
                acc_g = tl.dot(xk, wg, acc_g)
                acc_u = tl.dot(xk, wu, acc_u)
            h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
            h_ptrs = h_ptr + rows[:, None].to(tl.int64) * INTER + offs_n[None, :]
            tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])

    @triton.jit
    def _down_kernel(h_ptr, w_ptr, ws_ptr, sorted_pair_ptr, block_expert_ptr, pair_weight_ptr, y_ptr,
                     n_pairs, n_blocks, n_routed, n_experts, stride_we,
                     N: tl.constexpr, INTER: tl.constexpr, SHARED_INTER: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        e, rows, pair, valid, offs_n, n_mask, row_stride, w_base = _expert_block(
            block_expert_ptr, sorted_pair_ptr, w_ptr, ws_ptr, n_pairs, n_routed, stride_we, INTER,
            N, INTER, SHARED_INTER, BLOCK_M, BLOCK_N)
        if e < n_experts:
            w_ptrs = w_base + offs_n[None, :].to(tl.int64) * row_stride
            h_ptrs = h_ptr + rows[:, None].to(tl.int64) * INTER
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, INTER, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < INTER
                hk = tl.load(h_ptrs + offs_k[None, :], mask=valid[:, None] & k_mask[None, :], other=0.0)
                w = tl.load(w_ptrs + offs_k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
                acc = tl.dot(hk, w, acc)
            rw = tl.load(pair_weight_ptr + pair, mask=valid, other=0.0).to(tl.float32)
            acc = acc * rw[:, None]
            y_ptrs = y_ptr + pair[:, None].to(tl.int64) * N + offs_n[None, :]
            tl.store(y_ptrs, acc, mask=valid[:, None] & n_mask[None, :])

    @triton.jit
    def _align_body(pair_expert_ptr, sorted_pair_ptr, block_expert_ptr, shift_ptr, n_pairs,
                    E: tl.constexpr, P_P2: tl.constexpr, E_P2: tl.constexpr, ROWS: tl.constexpr, NB: tl.constexpr,
                    NB_P2: tl.constexpr, BLOCK_M: tl.constexpr, FILL: tl.constexpr):
        # One program: counts by histogram, pairs sorted by (expert, pair id), each moved by its
        # expert's (padded start - packed start); the sentinel written first, a barrier, then the pairs.
        offs_p = tl.arange(0, P_P2)
        pm = offs_p < n_pairs
        e = tl.load(pair_expert_ptr + offs_p, mask=pm, other=E).to(tl.int32)
        counts = tl.histogram(e, E_P2, mask=pm)
        offs_e = tl.arange(0, E_P2)
        real = offs_e < E
        padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        ends = tl.cumsum(padded, axis=0)
        packed_ends = tl.cumsum(counts, axis=0)
        tl.store(shift_ptr + offs_e, (ends - padded) - (packed_ends - counts))
        skey = tl.sort(e * P_P2 + offs_p)
        se = skey // P_P2
        sp = skey % P_P2
        for r0 in tl.static_range(0, ROWS, FILL):
            offs_r = r0 + tl.arange(0, FILL)
            tl.store(sorted_pair_ptr + offs_r, tl.zeros([FILL], dtype=tl.int32) + n_pairs, mask=offs_r < ROWS)
        tl.debug_barrier()
        valid = se < E
        shift = tl.load(shift_ptr + se, mask=valid, other=0)
        tl.store(sorted_pair_ptr + offs_p + shift, sp, mask=valid)
        offs_b = tl.arange(0, NB_P2)
        be = tl.sum(((offs_b[:, None] * BLOCK_M >= ends[None, :]) & real[None, :]).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + offs_b, be, mask=offs_b < NB)

    @triton.jit
    def _align_kernel(pair_expert_ptr, sorted_pair_ptr, block_expert_ptr, shift_ptr, n_pairs,
                      E: tl.constexpr, P_P2: tl.constexpr, E_P2: tl.constexpr, ROWS: tl.constexpr, NB: tl.constexpr,
                      NB_P2: tl.constexpr, BLOCK_M: tl.constexpr, FILL: tl.constexpr):
        _align_body(pair_expert_ptr, sorted_pair_ptr, block_expert_ptr, shift_ptr, n_pairs,
                    E, P_P2, E_P2, ROWS, NB, NB_P2, BLOCK_M, FILL)

    def _configs():
        if _INTERPRET:
            return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=1)]
        out = []
        for bn, bk, stages in ((16, 256, 4), (16, 128, 6), (32, 128, 4), (32, 256, 3), (64, 128, 4), (64, 64, 5),
                               (64, 256, 3), (128, 64, 4), (128, 128, 3), (32, 64, 6)):
            out.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=stages))
        return out

    def _configs_large():
        # BLOCK_M_LARGE (or 64) rows: GEMM tiles (vLLM's fused_moe uses 64-128 x 64-128 x 32-64 at these sizes); every
        # config fits the gate|up kernel's x tile and two weight tiles per stage, at 128 rows, in an H100's shared memory
        if _INTERPRET:
            return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
        return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=stages)
                for bn, bk, w, stages in ((64, 64, 4, 4), (128, 64, 4, 3), (128, 64, 8, 4), (64, 128, 4, 3),
                                          (128, 32, 4, 5), (64, 32, 4, 5), (256, 64, 8, 2))]

    _gate_up = triton.autotune(_configs(), key=["n_blocks", "K", "INTER"], do_bench=autotune_bench)(_gate_up_kernel)
    _down = triton.autotune(_configs(), key=["n_blocks", "N", "INTER"], do_bench=autotune_bench)(_down_kernel)
    # BLOCK_M in the key: 64- and 128-row blocks (an engine's packed_block_m) share these tuners
    _gate_up_large = triton.autotune(_configs_large(), key=["n_blocks", "K", "INTER", "BLOCK_M"],
                                     do_bench=autotune_bench)(_gate_up_kernel)
    _down_large = triton.autotune(_configs_large(), key=["n_blocks", "N", "INTER", "BLOCK_M"],
                                  do_bench=autotune_bench)(_down_kernel)


ALIGN_MAX_PAIRS = 1024


if triton is not None:

    @triton.jit
    def _combine_rows_kernel(ys_ptr, dest_ptr, w_ptr, shared_ptr, res_ptr, out_ptr, H, K: tl.constexpr,
                             GATHER: tl.constexpr, WEIGHTED: tl.constexpr, HAS_SHARED: tl.constexpr,
                             HAS_RES: tl.constexpr, BLOCK_H: tl.constexpr):
        # token t sums its K rows of ys in fp32 (rows t*K.. in place, or dest[t*K..] with GATHER; times w[t*K..]
        # with WEIGHTED), then adds the shared MLP's row and the residual's, rounding as each eager op rounds
        t = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        m = offs < H
        acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        for j in tl.static_range(K):
            row = t * K + j
            if GATHER:
                row = tl.load(dest_ptr + t * K + j).to(tl.int64)
            y = tl.load(ys_ptr + row * H + offs, mask=m, other=0.0).to(tl.float32)
            if WEIGHTED:
                y = tl.load(w_ptr + t * K + j).to(tl.float32) * y
            acc += y
        out = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
        if HAS_SHARED:
            out = (out + tl.load(shared_ptr + t * H + offs, mask=m, other=0.0).to(tl.float32))
            out = out.to(out_ptr.dtype.element_ty).to(tl.float32)
        if HAS_RES:
            out = tl.load(res_ptr + t * H + offs, mask=m, other=0.0).to(tl.float32) + out
        tl.store(out_ptr + t * H + offs, out.to(out_ptr.dtype.element_ty), mask=m)


def _combine_rows(ys, n_tokens, dtype, dest=None, weights=None, shared=None, residual=None) -> torch.Tensor:
    """The one combine pass (see _combine_rows_kernel): [n_tokens, H] in dtype."""
    h = ys.shape[-1]
    assert ys.stride(-1) == 1 and ys.stride(0) == h
    out = torch.empty(n_tokens, h, dtype=dtype, device=ys.device)
    if n_tokens == 0:
        return out
    block_h = min(1024, triton.next_power_of_2(h))
    sh = shared.contiguous() if shared is not None else out
    res = residual.contiguous() if residual is not None else out
    _combine_rows_kernel[(n_tokens, triton.cdiv(h, block_h))](
        ys, dest.contiguous() if dest is not None else ys, weights.contiguous() if weights is not None else ys, sh, res,
        out, h, K=ys.shape[0] // n_tokens, GATHER=dest is not None, WEIGHTED=weights is not None,
        HAS_SHARED=shared is not None, HAS_RES=residual is not None, BLOCK_H=block_h, num_warps=4)
    return out


def combine_kernel(y: torch.Tensor, residual: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """`combine` with a residual as one Triton pass (fixed tiles). The compiled PyTorch combine chose its
    reduction tiles by autotuning on the first shapes it met: on one H100 run it took 327 us a layer at 528
    tokens against 43 us on another (benchmarks/ENGINE_NOTES.md), so the result hung on warm-up order."""
    return _combine_rows(y, n_tokens, residual.dtype, residual=residual)


def combine_sorted_reference(ys: torch.Tensor, dest: torch.Tensor, weights: torch.Tensor,
                             shared: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The grouped-GEMM path's combine as PyTorch ops: ys [P, H] (pair outputs sorted by expert), dest [T * k] (row
    of ys of each (token, j) pair), weights [T, k] -> residual + (shared + sum_j weights * ys[dest]), each sum
    rounded to ys' dtype as the eager ops do (the weighted sum in fp32)."""
    t, k = weights.shape
    out = (ys.index_select(0, dest).view(t, k, -1).float() * weights.unsqueeze(-1)).sum(1).to(ys.dtype)
    if shared is not None:
        out = out + shared
    return out if residual is None else residual + out


def combine_sorted(ys: torch.Tensor, dest: torch.Tensor, weights: torch.Tensor,
                   shared: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """combine_sorted_reference in one Triton pass: each token's k rows gathered, weighted and summed in fp32, the
    shared MLP's output and the residual added. As ops that was a gather of [T * k, H], the compiled weighted sum
    (its reduction tiles autotuned on the first shapes met: 2 ms a layer for 19,682 tokens on an H100, ~13x its
    bytes' time) and two adds: ~20% of a prefill's GPU time (benchmarks/ENGINE_NOTES.md)."""
    return _combine_rows(ys, weights.shape[0], ys.dtype, dest, weights, shared, residual)


def align_buffers(n_pairs: int, n_experts: int, device, block_m: int = BLOCK_M):
    """(sorted_pair, block_expert, scratch, constexpr kwargs) for the one-program alignment."""
    nb = max_blocks(n_pairs, n_experts, block_m)
    e_p2 = triton.next_power_of_2(n_experts + 1)
    sorted_pair = torch.empty(nb * block_m, dtype=torch.int32, device=device)
    block_expert = torch.empty(nb, dtype=torch.int32, device=device)
    shift = torch.empty(e_p2, dtype=torch.int32, device=device)
    meta = dict(E=n_experts, P_P2=max(16, triton.next_power_of_2(n_pairs)), E_P2=e_p2, ROWS=nb * block_m, NB=nb,
                NB_P2=max(16, triton.next_power_of_2(nb)), BLOCK_M=block_m, FILL=1024)
    return sorted_pair, block_expert, shift, meta


def moe_align_triton(pair_expert: torch.Tensor, n_experts: int, block_m: int = BLOCK_M):
    """moe_align in one Triton program (at most ALIGN_MAX_PAIRS pairs): the same two tensors."""
    p = pair_expert.numel()
    assert p <= ALIGN_MAX_PAIRS
    sorted_pair, block_expert, shift, meta = align_buffers(p, n_experts, pair_expert.device, block_m)
    _align_kernel[(1,)](pair_expert, sorted_pair, block_expert, shift, p, **meta, num_warps=4)
    return sorted_pair, block_expert


def fused_moe(x: torch.Tensor, pair_expert: torch.Tensor, pair_weight: torch.Tensor, weights: ExpertWeights,
              sorted_pair: torch.Tensor, block_expert: torch.Tensor, block_m: int = BLOCK_M) -> torch.Tensor:
    """The two kernels: x [T, H] (contiguous), pairs as laid out by the router and aligned in blocks of
    block_m rows (BLOCK_M, or a GEMM tile's 64 or BLOCK_M_LARGE); fp32 y [P, H]."""
    p = pair_expert.numel()
    nb = block_expert.numel()
    i = weights.inter
    h = torch.empty(nb * block_m, i, dtype=x.dtype, device=x.device)
    gate_up, down = (_gate_up, _down) if block_m == BLOCK_M else (_gate_up_large, _down_large)
    ws_gu = weights.shared_gate_up if weights.n_shared else weights.w_gate_up
    ws_d = weights.shared_down if weights.n_shared else weights.w_down
    assert x.stride(-1) == 1 and weights.w_gate_up.is_contiguous() and weights.w_down.is_contiguous()
    assert not weights.n_shared or (ws_gu.is_contiguous() and ws_d.is_contiguous())

    def grid_i(meta):
        return (nb, triton.cdiv(i, meta["BLOCK_N"]))

    gate_up[grid_i](x, weights.w_gate_up, ws_gu, sorted_pair, block_expert, h,
                     p, nb, weights.n_routed, weights.n_experts, x.stride(0), weights.w_gate_up.stride(0),
                     PAIRS_PER_TOKEN=p // x.shape[0], K=weights.hidden, INTER=i, SHARED_INTER=weights.shared_inter,
                     BLOCK_M=block_m)
    y = torch.empty(p, weights.hidden, dtype=torch.float32, device=x.device)

    def grid_h(meta):
        return (nb, triton.cdiv(weights.hidden, meta["BLOCK_N"]))

    down[grid_h](h, weights.w_down, ws_d, sorted_pair, block_expert, pair_weight, y,
                  p, nb, weights.n_routed, weights.n_experts, weights.w_down.stride(0),
                  N=weights.hidden, INTER=i, SHARED_INTER=weights.shared_inter, BLOCK_M=block_m)
    return y
