"""Process-wide glibc malloc settings for the scoring processes (stream consumers, the REST scorers):
freed memory stays with the process.

glibc returns memory to the kernel eagerly: an allocation above the (dynamic) mmap threshold gets its
own mapping, unmapped on free, and a heap whose free top grows past the trim threshold is shrunk.
The scorer's forward allocates activations of a few MB per pass (a 256-transaction pass: [4096, 240]
floats is 3.9 MB), numpy and the store client allocate and free batch-sized arrays, so each batch
took its pages back from the kernel again: ~8,400 page faults per 1,024-transaction forward, ~15 us
of *system* CPU a transaction on top of ~45 us of user CPU (benchmarks/fraud_scorer_speed.py,
`sys_us_per_tx`). With allocations up to 32 MiB served from the heap and the heap trimmed only past
1 GiB of free top, the same forward takes no page faults after the first batch; the price is that
the process keeps its peak heap (tens of MB for a stream consumer).

`ARGUS_MALLOC_TUNING=0` leaves glibc's defaults (for A/B runs). Elsewhere than glibc: nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024

_done = False


def keep_freed_memory() -> bool:
    """Set the thresholds once per process; True when glibc took them."""
    global _done
    if _done:
        return True
    if os.environ.get("ARGUS_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
