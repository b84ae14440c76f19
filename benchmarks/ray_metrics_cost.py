"""What `metrics.ray` costs a stream consumer or an Ingress replica: the time of one update of a
mirrored metric (services/stream_ray_metrics.py: the local prometheus_client series + the Ray
metric), against the local series alone, inside a Ray actor as in production.

    python benchmarks/ray_metrics_cost.py              # 20,000 updates of each kind
    python benchmarks/ray_metrics_cost.py --updates 100000
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import ray


@ray.remote
class Probe:
    def run(self, n: int) -> dict[str, float]:
        from pipelines.metrics import StreamMetrics
        from services.stream_ray_metrics import mirror_to_ray

        out = {}
        for label, metrics in (("local", StreamMetrics()), ("mirrored", mirror_to_ray(StreamMetrics()))):
            consumed = metrics.consumed.labels("fraud", "argus.transactions")
            step = metrics.step_latency.labels("fraud", "score")
            lag = metrics.lag.labels("fraud", "argus.transactions", "0")
            for name, call in (("counter_inc", lambda: consumed.inc(250)), ("histogram_observe", lambda: step.observe(0.004)),
                               ("gauge_set", lambda: lag.set(17))):
                t = time.perf_counter()
                for _ in range(n):
                    call()
                out[f"{label}_{name}_us"] = round((time.perf_counter() - t) / n * 1e6, 2)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=20_000)
    args = ap.parse_args()
    from services.local_ray import short_temp_dir

    temp = short_temp_dir("rmc")
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(temp), configure_logging=False, log_to_driver=False)
    try:
        result = ray.get(Probe.remote().run.remote(args.updates))
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    result["per_batch_extra_us"] = round(  # a fraud batch makes ~15 per-batch updates (services/stream_ray_metrics.py)
        15 * (result["mirrored_histogram_observe_us"] - result["local_histogram_observe_us"]), 1)
    print(json.dumps({"updates": args.updates, **result}, indent=2))


if __name__ == "__main__":
    main()
