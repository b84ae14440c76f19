"""A first run prints no warning a user cannot act on: start Ray as every command does and load the
fraud scorer in a fresh process (no test conftest in between), then read its stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
from services.local_ray import ensure_ray
stop = ensure_ray(1)
import ray
assert ray.get(ray.put(7)) == 7
from models.fraud_scorer import FraudScorer
FraudScorer.load(None)
stop()
print("ok")
"""


def test_ray_start_and_model_load_print_no_warning():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    for noise in ("Token authentication is", "eos_token_id", "InvalidAuthToken"):
        assert noise not in proc.stderr, proc.stderr[-2000:]
