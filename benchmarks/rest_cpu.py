"""Server CPU per request: rest_load's app (HAProxy, one Ingress, one FraudScorer), wrk on ping and
single-transaction score, and the CPU seconds each server process (Ingress and FraudScorer replicas,
HAProxy) spent per request. The figure to compare versions on a shared, loaded machine, where RPS
moves with everybody else's work.

    python benchmarks/rest_cpu.py --score-in-ingress both --duration 10
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))
import rest_load  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _pids() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, pattern in (("ingress", "ServeReplica:argus:Ingress"), ("fraud", "ServeReplica:argus:FraudScorer"),
                          ("haproxy", "haproxy")):
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        out[name] = [int(p) for p in found]
    return out


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _fraud_batches(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    value = {name: float(line.split()[-1]) for line in text.splitlines()
             for name in ("sum", "count") if line.startswith(f'argus_model_batch_size_{name}{{model="fraud"}}')}
    return value.get("sum", 0.0), value.get("count", 0.0)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(handle, args) -> dict:
    pids = _pids()
    cases = {"ping": ("GET", "/v1/ping", None),
             "score": ("POST", "/v1/fraud/score", [json.dumps(t) for t in rest_load.simulated_transactions()])}
    out = {}
    for name, (method, path, body) in cases.items():
        rest_load.run_asyncio(handle.url + path, method, body, rest_load.BENCH_KEY, 4, 2.0, 20, args.client_core)
        before = {k: sum(_cpu(p) for p in v) for k, v in pids.items()}
        batches = _fraud_batches(handle.url)
        t0 = time.perf_counter()
        r = rest_load.run_wrk(handle.url + path, method, body, rest_load.BENCH_KEY, args.concurrency, args.duration,
                              args.client_core)
        wall = time.perf_counter() - t0
        cpu = {k: sum(_cpu(p) for p in v) - before[k] for k, v in pids.items()}
        after = _fraud_batches(handle.url)
        if after[1] > batches[1]:  # the batch a request was scored in, averaged over requests
            r["mean_batch"] = round((after[0] - batches[0]) / (after[1] - batches[1]), 1)
        r["cpu_us_per_req"] = {k: round(v / r["requests"] * 1e6, 1) for k, v in cpu.items()}
        r["cpu_share"] = {k: round(v / wall, 2) for k, v in cpu.items()}
        out[name] = r
        print(f"  {name:<6} {r['rps']:8.1f} RPS p50 {r['p50_ms']:6.1f} p99 {r['p99_ms']:6.1f} ms  server CPU us/req "
              f"{r['cpu_us_per_req']}  cores busy {r['cpu_share']}  batch {r.get('mean_batch', '-')}", flush=True)
    out["score_vs_ping"] = out["score"]["rps"] / out["ping"]["rps"]
    out["rss_mb"] = {k: round(sum(_rss_mb(p) for p in v)) for k, v in pids.items()}
    print(f"  resident memory MB {out['rss_mb']}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--score-in-ingress", choices=["auto", "true", "false", "both"], default="both")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1, help="alternate the modes this many times")
    a = p.parse_args()
    args = argparse.Namespace(serve_config=str(REPO / "infra" / "serve.yaml"), fraud_checkpoint=None,
                              ingress_replicas=1, fraud_replicas=1, batch_size=64, ingress_batch_wait_s=0.002,
                              batch_wait_s=0.005, explain_top_k=5, client_core=0, concurrency=a.concurrency,
                              duration=a.duration)
    modes = ["false", "auto"] if a.score_in_ingress == "both" else [a.score_in_ingress]
    results = []
    for _ in range(a.rounds):
        for mode in modes:
            print(f"score_in_ingress={mode}; load average {os.getloadavg()[0]:.2f}", flush=True)
            handle = rest_load.start_app(args, ha_proxy=True, score_in_ingress=mode)
            try:
                results.append((mode, measure(handle, args)))
            finally:
                rest_load.stop_app(handle)
            print(f"  score/ping {results[-1][1]['score_vs_ping']:.2f}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
