"""pipelines/allocator.py: the stream's processes keep freed memory, so a batch's activations take no page faults."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import os, resource, sys
import numpy as np, torch
torch.set_num_threads(1)
from pipelines.allocator import keep_freed_memory
tuned = keep_freed_memory()
from models.fraud_scorer import FraudScorer, context_tensors
from models.fraud_state import TxColumns
scorer = FraudScorer.load(None)
rng = np.random.default_rng(0)
n = 1024
cols = TxColumns([f"t{i}" for i in range(n)], 1.52e9 + np.sort(rng.uniform(0, 86400, n)),
                 [str(x) for x in rng.integers(0, 300, n)], [str(x) for x in rng.integers(0, 500, n)], rng.gamma(2, 30, n))
state = scorer.new_state()
t = context_tensors(state.advance_columns(cols))
fast = scorer.cpu_forward()
for _ in range(3):
    fast.logits(t)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    fast.logits(t)
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _probe(env_extra: dict[str, str]) -> tuple[bool, float]:
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tuned, faults = out.stdout.split()[-2:]
    return tuned == "True", float(faults)


def test_a_tuned_process_scores_without_page_faults():
    if not sys.platform.startswith("linux"):
        return
    tuned, faults = _probe({})
    assert tuned
    assert faults < 1000  # untuned glibc: ~16,000 a 1,024-transaction forward here (3.9 MB activations a pass)


def test_it_can_be_turned_off():
    from pipelines import allocator

    tuned, _ = _probe({"ARGUS_MALLOC_TUNING": "0"})
    assert not tuned
    assert allocator.MMAP_THRESHOLD <= 32 * 1024 * 1024  # glibc's ceiling for the threshold on 64-bit
