"""Triton kernel for routed experts at decode batch sizes: one GEMV per (token, expert) pair.

At a few tokens per step, a grouped GEMM pads each expert's one or two rows to a 64/128-row tile
and streams its weights through few CTAs per expert (measured ~0.3 TB/s at batch 1 on an H200).
Here every (pair, 32-row block of the output) is its own program, so all SMs stream weights,
and no token sorting is needed: the program reads its expert id straight from the router output.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine uses grouped_mm / the expert loop instead
    triton = None


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _expert_gemv(x_ptr, w_ptr, idx_ptr, y_ptr, N: tl.constexpr, K: tl.constexpr, stride_x, stride_we, stride_wn, stride_y,
                     ROWS_PER_X: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pair = tl.program_id(0)
        nb = tl.program_id(1)
        expert = tl.load(idx_ptr + pair).to(tl.int64)
        row = pair // ROWS_PER_X
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        w_rows = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < K
            xk = tl.load(x_ptr + row * stride_x + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * xk[None, :], axis=1)
        tl.store(y_ptr + pair * stride_y + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


def expert_gemv(x: torch.Tensor, w: torch.Tensor, pair_expert: torch.Tensor, rows_per_x: int,
                block_n: int = 32, block_k: int = 256) -> torch.Tensor:
    """y[p] = w[pair_expert[p]] @ x[p // rows_per_x]: x [T, K], w [E, N, K] (row-major), -> [P, N]."""
    pairs = pair_expert.numel()
    _, n, k = w.shape
    assert x.stride(-1) == 1 and w.stride(-1) == 1
    y = torch.empty(pairs, n, dtype=x.dtype, device=x.device)
    grid = (pairs, triton.cdiv(n, block_n))
    _expert_gemv[grid](x, w, pair_expert, y, n, k, x.stride(0), w.stride(0), w.stride(1), y.stride(0),
                       ROWS_PER_X=rows_per_x, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return y
