"""Triton where it is installed: the fused kernels' modules share this import and its availability test.

Without Triton (CPU-only installs) `triton` and `tl` are None and the engine runs each kernel's PyTorch
reference. TRITON_INTERPRET=1 runs the kernels through Triton's interpreter on CPU (the tests do).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """The fused kernels can run on `device`: CUDA, or any device under the interpreter."""
    return triton is not None and (device.type == "cuda" or INTERPRET)


def autotune_bench(fn, quantiles=None):
    """The autotuners' timing: a short do_bench (5 warm-up, 20 ms of runs) so that tuning a shape, done in a
    graph's warm-up, costs a fraction of a second per config."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)
