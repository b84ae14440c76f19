"""Dashboards and alert rules name only metrics that something exports: the Argus registries
(pipelines/metrics.py, services/metrics.py), Ray's metrics agent (ray_*: names the installed Ray
defines) or Prometheus itself (up, ALERTS). The dashboards are Grafana dashboard JSON that the
provisioned datasource serves; the rules pass `promtool check rules` (and a structural check)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

OBS = Path(__file__).resolve().parent.parent / "infra" / "production" / "observability"
DASHBOARDS = sorted((OBS / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _argus_exported() -> set[str]:
    """Every series name the Argus registries can produce (labelled metrics yield no sample until
    used, so the names come from the families' types)."""
    from pipelines.metrics import StreamMetrics
    from services.metrics import IngressMetrics

    names = set()
    for registry in (StreamMetrics().registry, IngressMetrics().registry):
        for collector in list(registry._collector_to_names):  # every registered metric, used or not
            for family in collector.describe():
                base = family.name
                if family.type == "counter":
                    names |= {base + "_total"}
                elif family.type == "histogram":
                    names |= {base + s for s in HISTOGRAM_SUFFIXES}
                else:
                    names.add(base)
    return names


def _argus_ray_exported() -> set[str]:
    """Argus metrics recorded through Ray's metrics API (services/engine_metrics.py, the mirrored
    stream metrics of services/stream_ray_metrics.py): Ray's agent exports them with its ray_ prefix."""
    from services.engine_metrics import EngineGauges

    from pipelines.metrics import StreamMetrics
    from services.stream_ray_metrics import mirror_to_ray

    names: list[str] = []
    EngineGauges(gauge=lambda name, description: names.append(name))
    mirrored: list[tuple[str, str]] = []  # what consumers and Ingress replicas record through Ray (metrics.ray)
    from services.metrics import IngressMetrics

    for metrics in (StreamMetrics(), IngressMetrics()):
        mirror_to_ray(metrics, lambda kind, name, *rest: mirrored.append((kind, name)))
    for kind, name in mirrored:
        names += [name + s for s in HISTOGRAM_SUFFIXES] if kind == "histogram" else [name]
    return {"ray_" + n for n in names}


@lru_cache(maxsize=1)
def _ray_source() -> str:
    import ray

    root = Path(ray.__file__).parent
    parts = [p.read_text(errors="ignore") for sub in ("serve", "dashboard", "_private", "util")
             for p in (root / sub).rglob("*.py")]
    return "\n".join(parts)


def _ray_defines(name: str) -> bool:
    """ray_<base>[_total|_bucket|...]: Ray prefixes its metrics with ray_; <base> must be a metric
    name string in the installed Ray (or the exact series in Ray's own Grafana panels)."""
    base = name.removeprefix("ray_")
    for suffix in HISTOGRAM_SUFFIXES + ("_total",):
        if base.endswith(suffix):
            base = base.removesuffix(suffix)
            break
    src = _ray_source()
    return f'"{base}"' in src or name in src


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)                      # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)                     # ranges
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    functions = {w for w in words if re.search(rf"\b{w}\s*\(", expr)}
    keywords = {"and", "or", "unless", "offset", "bool", "e", "inf", "nan"}
    return {w for w in words - functions - keywords if not re.fullmatch(r"e\d*", w)}


def _exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            out += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", [])]
    for group in yaml.safe_load((OBS / "alerts.yaml").read_text())["groups"]:
        out += [(f"alerts.yaml: {r['alert']}", r["expr"]) for r in group["rules"]]
    return out


def test_metric_name_extraction():
    assert _metric_names('histogram_quantile(0.99, sum by (job, le) (rate(argus_x_bucket{a="b(c)"}[5m]))) > 2') == \
        {"argus_x_bucket"}
    assert _metric_names("sum(rate(a_total[5m])) / clamp_min(sum(rate(b_total[5m])), 1e-9) > 0.01 and up == 0") == \
        {"a_total", "b_total", "up"}


def test_dashboards_and_alerts_use_only_exported_metrics():
    argus = _argus_exported() | _argus_ray_exported()
    assert {"argus_stream_consumer_lag", "argus_stream_dead_letters_total", "argus_http_requests_total",
            "argus_model_results_total", "argus_stream_model_info"} <= argus
    used: set[str] = set()
    for where, expr in _exprs():
        names = _metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            ok = name in argus or name in PROMETHEUS_BUILTINS or (name.startswith("ray_") and _ray_defines(name))
            assert ok, f"{where}: {name} is not exported by Argus, Ray or Prometheus"
        used |= names
    # what the issue asks the dashboards to show is there
    for needed in ("argus_stream_records_consumed_total", "ray_argus_stream_records_consumed_total",
                   "ray_argus_stream_consumer_lag", "ray_argus_stream_batch_seconds_bucket", "argus_stream_consumer_lag", "argus_stream_batch_seconds_bucket",
                   "argus_stream_dead_letters_total", "argus_stream_alerts_total", "ray_serve_num_http_requests_total",
                   "ray_serve_http_request_latency_ms_bucket", "ray_serve_num_http_error_requests_total",
                   "argus_model_results_total", "ray_node_gpus_utilization", "ray_serve_deployment_replica_healthy",
                   "ALERTS"):
        assert needed in used, needed
    assert not _ray_defines("ray_argus_no_such_metric_total")  # the Ray check can fail


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_are_grafana_dashboard_json(path):
    d = json.loads(path.read_text())
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]) and d["title"] and isinstance(d["schemaVersion"], int)
    assert d["time"]["from"].startswith("now-") and isinstance(d["templating"]["list"], list)
    datasource = yaml.safe_load((OBS / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uids = {ds["uid"] for ds in datasource["datasources"]}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 6
    for p in d["panels"]:
        assert p["type"] in {"timeseries", "table", "stat", "gauge", "bargauge", "alertlist"}, p["type"]
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        assert p["datasource"]["uid"] in uids and p["datasource"]["type"] == "prometheus"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"]), p["title"]
    # the provisioning provider reads the folder compose mounts these files into
    provider = yaml.safe_load((OBS / "grafana" / "provisioning" / "dashboards" / "argus.yaml").read_text())
    compose = yaml.safe_load((OBS.parent / "docker-compose.yaml").read_text())["services"]["grafana"]["volumes"]
    assert f"./observability/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in compose


def test_alert_rules_are_prometheus_rules():
    rules = yaml.safe_load((OBS / "alerts.yaml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) == len(set(names))
    assert {"ArgusStreamLagGrowing", "ArgusDeadLetterRate", "ArgusStreamBatchP99OverTarget", "ArgusRestP99OverTarget",
            "ArgusReplicaDown"} <= set(names)
    for g in rules["groups"]:
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
            assert re.fullmatch(r"\d+[smh]", r["for"]) and r["labels"]["severity"] in {"warning", "critical"}
            assert r["annotations"]["summary"]
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed (apt-get install prometheus; .ci/run does)"
    out = subprocess.run([promtool, "check", "rules", str(OBS / "alerts.yaml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"SUCCESS: {len(names)} rules found" in out.stdout, out.stdout + out.stderr


def test_prometheus_config_is_valid_and_scrapes_the_metric_endpoints(tmp_path):
    config = yaml.safe_load((OBS / "prometheus.yaml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs["ray"] == ["ray-head:8080"]
    compose = yaml.safe_load((OBS.parent / "docker-compose.yaml").read_text())["services"]
    assert "--metrics-export-port=8080" in compose["ray-head"]["command"]
    cmd = compose["fraud-stream"]["command"]
    first, consumers = int(cmd[cmd.index("--metrics-port") + 1]), int(cmd[cmd.index("--consumers") + 1])
    assert jobs["argus-fraud-stream"] == [f"fraud-stream:{first + i}" for i in range(consumers)]
    shutil.copy(OBS / "alerts.yaml", tmp_path / "alerts.yaml")  # promtool resolves rule_files on disk
    config["rule_files"] = [str(tmp_path / "alerts.yaml")]
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([shutil.which("promtool") or "promtool", "check", "config", str(tmp_path / "prometheus.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stream_metrics_bind_the_configured_host(monkeypatch):
    """ARGUS_METRICS__HOST reaches the metrics server of a stream consumer (0.0.0.0 in a pod)."""
    from pipelines import fraud_stream
    from pipelines.metrics import StreamMetrics
    from pipelines.settings import Settings

    monkeypatch.setenv("ARGUS_METRICS__HOST", "0.0.0.0")
    seen = []

    class Bound(Exception):
        pass

    def fake_serve(self, port, addr="127.0.0.1"):
        seen.append((port, addr))
        raise Bound  # stop before the job needs a broker

    monkeypatch.setattr(StreamMetrics, "serve", fake_serve)
    with pytest.raises(Bound):
        fraud_stream.build_job(Settings(), "sqlite://", metrics_port=9555)
    assert seen == [(9555, "0.0.0.0")]
    assert Settings().metrics.host == "0.0.0.0"
    monkeypatch.delenv("ARGUS_METRICS__HOST")
    assert Settings().metrics.host == "127.0.0.1"  # loopback unless asked


def test_a_real_metrics_server_answers_on_the_configured_host():
    import socket
    import urllib.request

    from pipelines.metrics import StreamMetrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = StreamMetrics()
    m.model_info.labels("fraud", "fraud-small-x").set(1)
    m.serve(port, "0.0.0.0")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'argus_stream_model_info{job="fraud",version="fraud-small-x"} 1.0' in body
