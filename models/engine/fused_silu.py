"""SiLU(gate) * up of a fused [rows, 2I] gate|up projection in one Triton pass, for prefill-sized tensors.

A prefill's grouped-GEMM experts, shared experts and dense MLP each produce [tokens (x pairs), 2I] and need
SiLU(gate) * up. The compiled PyTorch version (kernels.silu_mul under torch.compile with dynamic shapes) ran at
~1.4 TB/s on an H100, about half its copy rate: 41.4 ms of a 32K prefill. Here the row width is a compile-time
constant, so both halves load in 16-byte vectors: 20.6 ms, and the 32K prefill 0.594-0.607 s against
0.610-0.625 s (benchmarks/ENGINE_NOTES.md). Arithmetic as the compiled version: fp32 inside, one rounding to the
input dtype (an ulp apart in bf16 where exp rounds otherwise).
"""

from __future__ import annotations

import torch

from . import kernels as K
from .triton_support import available, tl, triton  # noqa: F401  (available: the module's test)

BLOCK_ROWS = 16
BLOCK_COLS = 256

if triton is not None:

    @triton.jit
    def _silu_mul_kernel(h_ptr, out_ptr, n_rows, stride_h, INTER: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        m = (rows < n_rows)[:, None] & (cols < INTER)[None, :]
        gate_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_h + cols[None, :]
        gate = tl.load(gate_ptrs, mask=m, other=0.0).to(tl.float32)
        up = tl.load(gate_ptrs + INTER, mask=m, other=0.0).to(tl.float32)
        out = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(out_ptr + rows[:, None].to(tl.int64) * INTER + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


def silu_mul(h: torch.Tensor, fallback=K.silu_mul) -> torch.Tensor:
    """kernels.silu_mul: h [..., 2I] (last dim contiguous) -> [..., I]; `fallback` where Triton cannot run."""
    if not available(h.device) or h.stride(-1) != 1:
        return fallback(h)
    inter = h.shape[-1] // 2
    rows = h.reshape(-1, h.shape[-1])  # a view for the usual contiguous input
    out = torch.empty(*h.shape[:-1], inter, dtype=h.dtype, device=h.device)
    n = rows.shape[0]
    if n:
        grid = (triton.cdiv(n, BLOCK_ROWS), triton.cdiv(inter, BLOCK_COLS))
        _silu_mul_kernel[grid](rows, out, n, rows.stride(0), INTER=inter, BLOCK_R=BLOCK_ROWS, BLOCK_C=BLOCK_COLS,
                               num_warps=4)
    return out
