"""The production stack files validate offline: the compose file against the compose specification,
every Kubernetes manifest against the Kubernetes API schemas (kubernetes-validate, strict) or the
KubeRay / Prometheus Operator schemas of tests/fixtures/kuberay_v1_schema.py, and the image recipe
keeps the promises the manifests rely on (entrypoint, user, lock file)."""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipelines.settings import Settings
from tests.fixtures.kuberay_v1_schema import SCHEMAS

ROOT = Path(__file__).resolve().parent.parent
PROD = ROOT / "infra" / "production"
K8S_VERSION = "1.30"
# operators' own kinds that no bundled schema covers (Strimzi, CloudNativePG): parsed, not validated
UNVALIDATED = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "Cluster"}
MANIFESTS = ["rayservice.yaml", "stream-jobs.yaml", "networkpolicies.yaml", "monitoring.yaml",
             "kafka-strimzi.yaml", "postgres-cnpg.yaml"]


def _compose() -> dict:
    return yaml.safe_load((PROD / "docker-compose.yaml").read_text())


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((PROD / name).read_text()) if d]


# --- compose -----------------------------------------------------------------------------------------

def test_compose_file_validates_against_the_compose_specification():
    import check_jsonschema

    spec = json.loads((Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" /
                       "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(spec)(spec)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]]
    broken = copy.deepcopy(_compose())
    broken["services"]["store-init"]["depends_on"]["postgres"]["condition"] = "service_ready"  # not a condition
    assert list(validator.iter_errors(broken)), "the schema check cannot fail"


def test_compose_interpolations_have_a_default_or_fail_loudly():
    text = "\n".join(line for line in (PROD / "docker-compose.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    assert "${ARGUS_DB_PASSWORD:?" in text
    for var in re.findall(r"(?<!\$)\$\{([^}]*)\}", text):
        assert ":-" in var or ":?" in var, f"${{{var}}} is empty when unset"


def test_compose_cluster_id_is_a_kafka_uuid():
    cid = str(_compose()["x-kafka-env"]["CLUSTER_ID"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid), cid  # kafka-storage.sh random-uuid: base64url, no padding
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def _compose_topics() -> dict[str, dict]:
    init = _compose()["services"]["kafka-init"]
    script, parts = init["command"][0], init["environment"]["PARTITIONS"]
    topics = {}
    for line in script.splitlines():
        if not line.strip().startswith("mk "):
            continue
        words = shlex.split(line.strip())
        opts = dict(zip(words[1::2], words[2::2]))
        configs = dict(c.split("=") for c in re.findall(r"--config (\S+)", line))
        topics[opts["--topic"]] = {"partitions": int(parts if opts["--partitions"] == "$$PARTITIONS" else opts["--partitions"]),
                                   "config": configs}
    return topics


def test_compose_topics_have_the_partitions_and_retention_of_the_strimzi_topics():
    strimzi = {d["metadata"]["name"]: d["spec"] for d in _docs("kafka-strimzi.yaml") if d["kind"] == "KafkaTopic"}
    compose = _compose_topics()
    assert set(compose) == set(strimzi) == set(Settings().topics.all())
    for name, spec in strimzi.items():
        assert compose[name]["partitions"] == spec["partitions"], name
        assert compose[name]["config"] == {k: str(v) for k, v in spec.get("config", {}).items()}, name
    assert compose["argus.labels"]["config"]["retention.ms"] == str(90 * 86400 * 1000)  # labels arrive weeks late


def test_compose_runs_the_whole_service_from_one_image():
    services = _compose()["services"]
    argus = {n: s for n, s in services.items() if "argus" in str(s.get("image", ""))}
    assert set(argus) == {"store-init", "ray-head", "serve-deploy", "fraud-stream", "report-stream"}
    assert len({s["image"] for s in argus.values()}) == 1
    assert services["store-init"]["command"] == ["store", "init"] and services["store-init"]["restart"] == "no"
    for name in ("ray-head", "fraud-stream", "report-stream"):
        assert services[name]["depends_on"]["store-init"]["condition"] == "service_completed_successfully", name
    for name in ("fraud-stream", "report-stream"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        kafka = {k.removeprefix("ARGUS_KAFKA__").lower(): v for k, v in env.items() if k.startswith("ARGUS_KAFKA__")}
        s = Settings.model_validate({"kafka": kafka, "metrics": {"host": env["ARGUS_METRICS__HOST"]}})
        assert s.kafka.security_protocol == "SASL_SSL" and s.metrics.host == "0.0.0.0"
        assert all(h.endswith(":9094") for h in s.kafka.bootstrap_servers.split(","))  # the compose-network listener
        assert env["ARGUS_KAFKA__SASL_PASSWORD_FILE"] == f"/run/secrets/{services[name]['secrets'][0]}"
    # the REST app is deployed on the head from serve-compose.yaml, with the stream's customer history
    deploy = services["serve-deploy"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in deploy["volumes"]}
    assert mounted["./serve-compose.yaml"] in deploy["command"]
    # only REST (8000), Grafana and the Kafka client listeners reach the host
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"ray-head", "grafana", "kafka-1", "kafka-2", "kafka-3"}
    assert services["ray-head"]["ports"] == ["8000:8000"]


def test_serve_configs_give_rest_scoring_the_fraud_streams_history():
    from ray.serve.schema import ServeDeploySchema

    from pipelines.fraud_stream import StreamConfig

    c = StreamConfig.from_settings(Settings())
    rayservice = next(d for d in _docs("rayservice.yaml") if d["kind"] == "RayService")
    local = yaml.safe_load((ROOT / "infra" / "serve.yaml").read_text())["applications"][0]
    for config in (yaml.safe_load(rayservice["spec"]["serveConfigV2"]),
                   yaml.safe_load((PROD / "serve-compose.yaml").read_text())):
        ServeDeploySchema.model_validate(config)
        app = config["applications"][0]
        assert app["args"]["state_snapshot"] == f"store://{c.group}/{c.transactions_topic}"
        assert set(app["args"]) <= set(local["args"]), set(app["args"]) - set(local["args"])
        assert app["args"]["publish_dispositions"] is False  # the REST service has no Kafka user


# --- Kubernetes --------------------------------------------------------------------------------------

def _kuberay_validator(kind: str):
    import kubernetes_validate
    from referencing import Registry, Resource

    bundle = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    version = max((p.name for p in bundle.glob(f"v{K8S_VERSION}.*-local-strict")))
    definitions = Resource.from_contents(json.loads((bundle / version / "_definitions.json").read_text()))
    return jsonschema.Draft202012Validator(SCHEMAS[kind], registry=definitions @ Registry())


def _validate(doc: dict) -> None:
    import kubernetes_validate

    if doc["kind"] in SCHEMAS:
        _kuberay_validator(doc["kind"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", MANIFESTS)
def test_kubernetes_manifests_validate_against_their_schemas(name):
    docs = _docs(name)
    assert docs
    for doc in docs:
        if doc["kind"] in UNVALIDATED:
            continue
        try:
            _validate(doc)
        except Exception as exc:  # one line: which document, which field
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {str(exc).splitlines()[0]}")


def test_the_schemas_reject_what_kuberay_and_kubernetes_do_not_read():
    service = next(d for d in _docs("rayservice.yaml") if d["kind"] == "RayService")
    for field in ("serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"):
        bad = copy.deepcopy(service)
        bad["spec"][field] = 900
        with pytest.raises(jsonschema.ValidationError, match=field):
            _validate(bad)
    bad = copy.deepcopy(service)  # a typo inside a pod template is caught by Kubernetes' own schema
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["enviroment"] = []
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    job = next(d for d in _docs("rayservice.yaml") if d["kind"] == "Job")
    bad = copy.deepcopy(job)
    bad["spec"]["template"]["spec"]["restartPolicy"] = 3
    with pytest.raises(Exception, match="restartPolicy|3"):
        _validate(bad)


def test_every_stream_and_the_store_schema_have_a_workload():
    kinds = {(d["kind"], d["metadata"]["name"]) for name in ("rayservice.yaml", "stream-jobs.yaml") for d in _docs(name)}
    assert {("RayService", "argus"), ("RayCluster", "argus-fraud-stream"), ("RayCluster", "argus-report-stream"),
            ("Job", "argus-store-init"), ("Job", "argus-simulator")} <= kinds
    init = next(d for d in _docs("rayservice.yaml") if d["kind"] == "Job")
    assert init["spec"]["template"]["spec"]["containers"][0]["args"] == ["store", "init"]
    for doc in _docs("stream-jobs.yaml"):
        if doc["kind"] != "RayCluster":
            continue
        head = doc["spec"]["headGroupSpec"]
        assert doc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
        [container] = head["template"]["spec"]["containers"]
        script = container["args"][0]
        assert script.startswith("${KUBERAY_GEN_RAY_START_CMD/--block/} && exec argus stream ")
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_ADDRESS"] == "auto"
        assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def test_monitors_scrape_every_ray_node_and_the_consumers_report_through_ray():
    monitors = {d["metadata"]["name"]: d["spec"] for d in _docs("monitoring.yaml") if d["kind"] == "PodMonitor"}
    assert [e["port"] for e in monitors["argus-ray"]["podMetricsEndpoints"]] == ["metrics"]
    assert monitors["argus-ray"]["selector"]["matchLabels"]["ray.io/is-ray-node"] == "yes"
    # the fraud consumers run on the workers and record through Ray's metrics API, so the node agents
    # (one scrape per node) carry them; no per-consumer port is needed anywhere
    fraud = next(d for d in _docs("stream-jobs.yaml") if d["metadata"]["name"] == "argus-fraud-stream")
    head, [workers] = fraud["spec"]["headGroupSpec"], fraud["spec"]["workerGroupSpecs"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    script = head["template"]["spec"]["containers"][0]["args"][0].split()
    consumers = int(script[script.index("--consumers") + 1])
    actor_cpus = float(script[script.index("--actor-cpus") + 1])
    assert script[script.index("--metrics-port") + 1] == "0"
    assert consumers * actor_cpus <= workers["replicas"] * float(workers["rayStartParams"]["num-cpus"])  # they fit
    for template in _pod_templates_of(fraud):
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert Settings.model_validate({"metrics": {"ray": env["ARGUS_METRICS__RAY"]}}).metrics.ray is True
    # every Ray pod exports Ray's metrics on the port the argus-ray monitor scrapes
    service = next(d for d in _docs("rayservice.yaml") if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    groups = [service["headGroupSpec"]] + service["workerGroupSpecs"] + [
        g for d in _docs("stream-jobs.yaml") if d["kind"] == "RayCluster"
        for g in [d["spec"]["headGroupSpec"]] + d["spec"].get("workerGroupSpecs", [])]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        assert {"name": "metrics", "containerPort": 8080} in [
            {"name": p.get("name"), "containerPort": p["containerPort"]} for c in group["template"]["spec"]["containers"]
            for p in c.get("ports", [])]
    rule = next(d for d in _docs("monitoring.yaml") if d["kind"] == "PrometheusRule")
    alerts = yaml.safe_load((PROD / "observability" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]  # one set of alerts for compose and Kubernetes


def _pod_templates_of(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]] + [w["template"] for w in spec.get("workerGroupSpecs", [])]


# --- the image ---------------------------------------------------------------------------------------

def test_containerfile_runs_argus_unprivileged_from_the_lock_file():
    text = (PROD / "Containerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER 10001", final, re.M) and 'ENTRYPOINT ["argus"]' in final
    assert "HEALTHCHECK" in final and "/healthz" in final
    assert "-c requirements.lock" in text and "-c constraints.txt" in text
    assert "COPY --from=build /opt/argus /opt/argus" in final and "build-ca" not in final  # no build CA at run time
    cuda = (PROD / "Containerfile.cuda").read_text()
    assert 'ENTRYPOINT ["argus"]' in cuda and re.search(r"^USER 10001", cuda, re.M) and "requirements.lock" in cuda
    # the manifests pass subcommands to that entrypoint, never `argus` again
    for name in ("rayservice.yaml", "stream-jobs.yaml"):
        for doc in _docs(name):
            if doc["kind"] == "Job":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    assert "command" not in c and c["args"][0] != "argus", c["name"]
    for name, svc in _compose()["services"].items():
        if "argus" in str(svc.get("image", "")) and "entrypoint" not in svc:
            assert svc["command"][0] != "argus", name
