"""Stream metrics through Ray's metrics API (metrics.ray): every per-batch metric of a consumer is
also a Ray metric, exported by its node's Ray metrics agent as ray_<name> with the same labels."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.metrics import StreamMetrics
from services.stream_ray_metrics import PER_RECORD, mirror_to_ray


class FakeRay:
    def __init__(self, kind, name, description, labelnames, buckets):
        self.kind, self.name, self.labelnames, self.buckets = kind, name, labelnames, buckets
        self.calls: list[tuple[str, float, dict]] = []

    def inc(self, value, tags):
        self.calls.append(("inc", value, tags))

    def set(self, value, tags):
        self.calls.append(("set", value, tags))

    def observe(self, value, tags):
        self.calls.append(("observe", value, tags))


def _sample(metrics: StreamMetrics, name: str, labels: dict) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_update_goes_to_the_local_registry_and_to_ray_with_the_same_labels():
    made: dict[str, FakeRay] = {}

    def make(*args):
        made[args[1]] = FakeRay(*args)
        return made[args[1]]

    m = mirror_to_ray(StreamMetrics(), make)
    m.consumed.labels("fraud", "argus.transactions").inc(250)
    m.consumed.labels("fraud", "argus.transactions").inc(0)  # Ray's Counter refuses 0: not sent
    m.lag.labels("fraud", "argus.transactions", 3).set(42)
    m.batch_latency.labels("fraud").observe(0.02)
    m.dead_letters.labels("fraud", "decode", "malformed_json").inc()
    m.scores.labels("fraud").observe(0.9)  # per record: local only
    assert _sample(m, "argus_stream_records_consumed_total", {"job": "fraud", "topic": "argus.transactions"}) == 250
    assert _sample(m, "argus_stream_consumer_lag", {"job": "fraud", "topic": "argus.transactions", "partition": "3"}) == 42
    assert _sample(m, "argus_fraud_stream_score_count", {"job": "fraud"}) == 1
    assert made["argus_stream_records_consumed_total"].calls == [("inc", 250, {"job": "fraud", "topic": "argus.transactions"})]
    assert made["argus_stream_consumer_lag"].calls == [("set", 42, {"job": "fraud", "topic": "argus.transactions",
                                                                       "partition": "3"})]
    assert made["argus_stream_batch_seconds"].calls == [("observe", 0.02, {"job": "fraud"})]
    assert made["argus_stream_dead_letters_total"].calls == [("inc", 1.0, {"job": "fraud", "stage": "decode",
                                                                            "reason": "malformed_json"})]
    assert made["argus_stream_batch_seconds"].buckets == tuple(b for b in m.batch_latency._upper_bounds if b != float("inf"))
    assert made["argus_stream_batch_seconds"].kind == "histogram" and made["argus_stream_paused"].kind == "gauge"
    mirrored_names = {n.removesuffix("_total") for n in made}
    assert "argus_fraud_stream_score" not in mirrored_names and "argus_stream_duplicates" not in mirrored_names
    assert len(made) == len([a for a, v in vars(StreamMetrics()).items() if hasattr(v, "_type")]) - len(PER_RECORD)
    assert b"argus_stream_records_consumed_total" in m.render()  # the local endpoint still serves everything


def test_settings_switch_it_on(monkeypatch):
    from pipelines.settings import Settings

    assert Settings().metrics.ray is False
    monkeypatch.setenv("ARGUS_METRICS__RAY", "true")
    assert Settings().metrics.ray is True


@pytest.mark.integration
def test_the_node_metrics_agent_exports_a_consumers_metrics():
    """A real local Ray with a metrics export port; an actor mirrors its stream metrics; the node's
    Prometheus endpoint shows them as ray_argus_stream_* with the consumer's labels (Ray flushes every
    ~10 s). In a fresh interpreter: its own Ray, not the tests' shared one."""
    script = textwrap.dedent("""
        import shutil, socket, time, urllib.request, ray
        from services.local_ray import short_temp_dir
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        temp = short_temp_dir("rm")  # AF_UNIX socket paths must stay short
        ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port, configure_logging=False,
                 log_to_driver=False, _temp_dir=str(temp))

        @ray.remote
        class Consumer:
            def run(self):
                from pipelines.metrics import StreamMetrics
                from services.stream_ray_metrics import mirror_to_ray
                self.m = mirror_to_ray(StreamMetrics())
                self.m.consumed.labels("fraud", "argus.transactions").inc(250)
                self.m.lag.labels("fraud", "argus.transactions", "3").set(42)
                self.m.batch_latency.labels("fraud").observe(0.02)
                return True

        c = Consumer.remote(); ray.get(c.run.remote())
        wanted = ['ray_argus_stream_records_consumed_total{', 'ray_argus_stream_consumer_lag{',
                  'ray_argus_stream_batch_seconds_bucket{']
        deadline = time.time() + 90
        while time.time() < deadline:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            lines = [l for l in body.splitlines() if l.startswith("ray_argus_stream_")]
            if all(any(l.startswith(w) for l in lines) for w in wanted):
                print("\\n".join(lines)); break
            time.sleep(2)
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=180,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root),
                              "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    lines = out.stdout.splitlines()
    consumed = [l for l in lines if l.startswith("ray_argus_stream_records_consumed_total{")]
    assert consumed, out.stdout[-2000:] + out.stderr[-3000:]
    assert 'job="fraud"' in consumed[0] and 'topic="argus.transactions"' in consumed[0] and consumed[0].endswith(" 250.0")
    lag = next(l for l in lines if l.startswith("ray_argus_stream_consumer_lag{"))
    assert 'partition="3"' in lag and lag.endswith(" 42.0")


def test_an_ingress_replica_mirrors_its_request_metrics_when_asked(monkeypatch):
    from services import stream_ray_metrics
    from services.ingress import IngressCore

    made: dict[str, FakeRay] = {}

    def make(*args):
        made[args[1]] = FakeRay(*args)
        return made[args[1]]

    monkeypatch.setattr(stream_ray_metrics, "_ray_metric", make)
    plain = IngressCore(None, None, {})
    assert not made and plain.metrics.requests.__class__.__name__ == "Counter"  # off by default
    core = IngressCore(None, None, {"metrics_ray": True})
    core.metrics.observe_request("/v1/fraud/score", "POST", 200, 0.012)
    core.metrics.model_results.labels("fraud", "fraud-small-x").inc()
    assert made["argus_http_requests_total"].calls == [("inc", 1.0, {"route": "/v1/fraud/score", "method": "POST",
                                                                      "status": "200"})]
    assert made["argus_http_request_duration_seconds"].calls == [("observe", 0.012, {"route": "/v1/fraud/score",
                                                                                      "method": "POST"})]
    assert made["argus_model_results_total"].calls == [("inc", 1.0, {"model": "fraud", "version": "fraud-small-x"})]
    text, _ = core.metrics.render()  # the replica's own /metrics still has it
    assert b'argus_http_requests_total{method="POST",route="/v1/fraud/score",status="200"} 1.0' in text


def test_build_app_passes_the_setting_to_the_ingress(monkeypatch):
    from services.app import build_app

    monkeypatch.setenv("ARGUS_METRICS__RAY", "true")
    from pipelines.settings import get_settings

    get_settings.cache_clear()
    try:
        config = build_app({})._bound_deployment.init_args[2]  # Ingress.bind(fraud, summarizer, config)
    finally:
        get_settings.cache_clear()
    assert config["metrics_ray"] is True
