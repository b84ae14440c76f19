"""A short fault campaign inside the test command: 3 random schedules of `benchmarks/chaos_stream.py`
(consumer SIGKILL and SIGSTOP, store outages through a TCP proxy, broker restarts, rebalances,
hostile records drawn by hypothesis) against real tansu, PostgreSQL and Ray actors. Counting against
a fault-free run must find nothing lost, nothing duplicated, every hostile record dead-lettered with
a reason, every score equal. The long campaign (50 schedules) is a benchmark."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos_stream.py"


def test_three_fault_schedules_lose_nothing_and_duplicate_nothing(ray_local, capsys):
    spec = importlib.util.spec_from_file_location("chaos_stream", SCRIPT)
    chaos = importlib.util.module_from_spec(spec)
    sys.modules["chaos_stream"] = chaos  # its dataclasses look their module up there
    spec.loader.exec_module(chaos)
    rc = chaos.main(["--schedules", "3", "--seed", "7", "--records", "400", "--window", "18",
                     "--drain-timeout", "150"])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("schedules=3 ")
    fields = dict(kv.split("=", 1) for kv in last.split())
    assert {k: fields[k] for k in ("lost", "duplicated", "dlq_mismatch", "score_mismatch", "alert_mismatch")} == \
        {"lost": "0", "duplicated": "0", "dlq_mismatch": "0", "score_mismatch": "0", "alert_mismatch": "0"}, out
    assert int(fields["hostile"]) >= 3 * 40  # >= 10% hostile records were in the traffic
    assert rc == 0
