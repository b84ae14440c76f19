"""The production manifests stay consistent with the settings and the Serve config (parsed, not deployed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.settings import Settings

PROD = Path(__file__).resolve().parent.parent / "infra" / "production"


COMPOSE = "docker-compose.yaml"


def _rayservice() -> dict:
    return next(d for d in yaml.safe_load_all((PROD / "rayservice.yaml").read_text()) if d["kind"] == "RayService")


def _pod_templates(doc: dict) -> list[dict]:
    """The pod templates of a workload: a Job/Deployment's, or a RayCluster's head and worker groups."""
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"]] + [w["template"] for w in spec.get("workerGroupSpecs", [])]
    return [spec["template"]]


def test_every_file_is_marked_production_only():
    for path in PROD.rglob("*"):
        if path.is_file():
            assert "PRODUCTION ONLY" in path.read_text()[:400], path.relative_to(PROD)


def test_rayservice_env_names_are_real_settings(monkeypatch):
    env = _rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env if e["name"].startswith("ARGUS_") and e["name"] != "ARGUS_HOME"]
    assert {"ARGUS_KAFKA__BOOTSTRAP_SERVERS", "ARGUS_STORE__URL"} <= set(names)
    for e in env:
        if "value" in e and e["name"].startswith("ARGUS_"):
            monkeypatch.setenv(e["name"], e["value"])
    monkeypatch.setenv("ARGUS_STORE__URL", "postgresql+psycopg://argus@db/argus")
    settings = Settings()
    for name in names:
        section, field = name.removeprefix("ARGUS_").lower().split("__")
        assert hasattr(getattr(settings, section), field), name
    assert settings.kafka.bootstrap_servers == "argus-kafka-kafka-bootstrap.argus.svc:9093"  # the TLS listener
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.topics.partitions == 12 and settings.model.device == "cuda"


def test_serve_config_matches_local_serve_yaml():
    from ray.serve.schema import ServeDeploySchema

    prod = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(prod) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(prod)
    local = yaml.safe_load((PROD.parent / "serve.yaml").read_text())
    p_app, l_app = prod["applications"][0], local["applications"][0]
    assert p_app["import_path"] == l_app["import_path"] == "services.app:build_app"
    assert set(p_app["args"]) <= set(l_app["args"]), set(p_app["args"]) - set(l_app["args"])
    assert {d["name"] for d in p_app["deployments"]} == {d["name"] for d in l_app["deployments"]}


def test_topics_match_settings():
    topics = set(Settings().topics.all())
    strimzi = [d for d in yaml.safe_load_all((PROD / "kafka-strimzi.yaml").read_text()) if d["kind"] == "KafkaTopic"]
    assert {d["metadata"]["name"] for d in strimzi} == topics
    compose = (PROD / COMPOSE).read_text()
    assert all(t in compose for t in topics)


# --- issue 11: the production front door ------------------------------------------------------------

def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((PROD / name).read_text()) if d]


def _all_docs() -> list[dict]:
    out = []
    for path in sorted(PROD.glob("*.yaml")):
        if path.name != COMPOSE and not path.name.startswith("serve-"):
            out += _docs(path.name)
    return out


def test_ray_dashboard_is_not_exposed():
    head = _rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"].get("dashboard-host", "127.0.0.1") in ("127.0.0.1", "localhost")
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    for c in head["template"]["spec"]["containers"]:
        assert 8265 not in {p["containerPort"] for p in c.get("ports", [])}, "the dashboard port is on the head Service"
    serve = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    assert serve["http_options"]["port"] == 8000
    for doc in _all_docs():  # no Service, Ingress or policy anywhere opens 8265
        assert "8265" not in yaml.safe_dump(doc), doc["metadata"]["name"]


def _strimzi(kind: str) -> list[dict]:
    return [d for d in _docs("kafka-strimzi.yaml") if d["kind"] == kind]


def test_kafka_listeners_are_tls_with_scram_and_acls_are_on():
    kafka = _strimzi("Kafka")[0]["spec"]["kafka"]
    assert kafka["listeners"], "no listener"
    for listener in kafka["listeners"]:
        assert listener["tls"] is True, listener["name"]
        assert listener["authentication"]["type"] == "scram-sha-512", listener["name"]
        assert listener.get("networkPolicyPeers"), listener["name"]
    assert kafka["authorization"]["type"] == "simple" and not kafka["authorization"].get("superUsers")
    env = {k: str(v) for k, v in yaml.safe_load((PROD / COMPOSE).read_text())["x-kafka-env"].items()}
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols["EXTERNAL"] == "SASL_SSL" and set(protocols.values()) <= {"SSL", "SASL_SSL"}
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512" and env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert "StandardAuthorizer" in env["KAFKA_AUTHORIZER_CLASS_NAME"]


def _acls(user: str) -> dict[str, set[str]]:
    """topic or group:<name> -> operations allowed to `user` in kafka-strimzi.yaml."""
    spec = next(d for d in _strimzi("KafkaUser") if d["metadata"]["name"] == user)["spec"]
    assert spec["authentication"]["type"] == "scram-sha-512"
    out: dict[str, set[str]] = {}
    for acl in spec["authorization"]["acls"]:
        r = acl["resource"]
        assert r.get("patternType", "literal") == "literal" and acl.get("type", "allow") == "allow", acl
        key = r["name"] if r["type"] == "topic" else f"{r['type']}:{r['name']}"
        out.setdefault(key, set()).update(acl["operations"])
    return out


def _compose_acls(user: str) -> dict[str, set[str]]:
    import re

    init = yaml.safe_load((PROD / COMPOSE).read_text())["services"]["kafka-init"]["command"][0]
    out: dict[str, set[str]] = {}
    for line in init.splitlines():
        if f"--allow-principal User:{user} " not in line:
            continue
        ops = set(re.findall(r"--operation (\w+)", line))
        topic, group = re.search(r"--topic (\S+)", line), re.search(r"--group (\S+)", line)
        key = topic.group(1) if topic else f"group:{group.group(1)}"
        out.setdefault(key, set()).update(ops)
    return out


def test_each_job_may_touch_only_its_topics():
    t = Settings().topics
    reads, writes = {"Read", "Describe"}, {"Write", "Describe"}
    expected = {
        "argus-fraud-stream": {t.transactions: reads, t.labels: reads, t.alerts: writes, t.dead_letter: writes,
                               "group:argus-fraud": {"Read"}},
        "argus-report-stream": {t.reports: reads, t.dead_letter: writes, "group:argus.reports": {"Read"}},
        "argus-simulator": {t.transactions: writes, t.labels: writes, t.reports: writes},
    }
    assert {d["metadata"]["name"] for d in _strimzi("KafkaUser")} == set(expected)
    for user, acls in expected.items():
        got = _acls(user)
        assert set(got) == set(acls), (user, got)
        for resource, ops in acls.items():
            assert ops <= got[resource] <= ops | {"Describe"}, (user, resource, got[resource])
        assert {k: v - {"Describe"} for k, v in _compose_acls(user).items()} == \
            {k: v - {"Describe"} for k, v in acls.items()}, user
    assert "Read" not in set().union(*_acls("argus-simulator").values())  # simulators write only


def test_every_kafka_client_pod_uses_tls_scram_and_its_own_user():
    jobs = {d["metadata"]["name"]: d for d in _docs("stream-jobs.yaml")}
    assert set(jobs) == {"argus-fraud-stream", "argus-report-stream", "argus-simulator"}
    for name, job in jobs.items():
        for pod in _pod_templates(job):  # the driver's and the consumers' pods alike
            assert pod["metadata"]["labels"]["argus.io/kafka-client"] == "true"
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            assert env["ARGUS_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL" and env["ARGUS_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
            assert env["ARGUS_KAFKA__SASL_USERNAME"] == name and env["ARGUS_KAFKA__BOOTSTRAP_SERVERS"].endswith(":9093")
            assert "ARGUS_KAFKA__SASL_PASSWORD" not in env  # the password comes from the user's secret, as a file
            secrets = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
            assert {name, "argus-kafka-cluster-ca-cert"} == secrets
            Settings.model_validate({"kafka": {k.removeprefix("ARGUS_KAFKA__").lower(): v for k, v in env.items()
                                               if k.startswith("ARGUS_KAFKA__")}})  # real settings, valid values


def test_postgres_is_not_published():
    compose = yaml.safe_load((PROD / COMPOSE).read_text())
    assert "ports" not in compose["services"]["postgres"]
    assert "ports" not in compose["services"]["prometheus"]
    for doc in _all_docs():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
    cluster = _docs("postgres-cnpg.yaml")[0]["spec"]
    for svc in cluster.get("managed", {}).get("services", {}).get("additional", []):
        assert svc["serviceTemplate"]["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_network_policies_deny_by_default_and_admit_only_clients():
    pols = {d["metadata"]["name"]: d["spec"] for d in _docs("networkpolicies.yaml")}
    deny = pols["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    pg = pols["postgres-from-store-clients"]
    assert pg["podSelector"]["matchLabels"] == {"cnpg.io/cluster": "argus-pg"}
    peers = [p for rule in pg["ingress"] for p in rule["from"]]
    assert {"argus.io/store-client": "true"} in [p.get("podSelector", {}).get("matchLabels") for p in peers]
    assert all(p.get("podSelector") or p.get("namespaceSelector") for p in peers)  # no open ipBlock / empty peer
    opened = {(name, port.get("port"), port.get("endPort")) for name, spec in pols.items()
              for rule in spec.get("ingress", []) for port in rule.get("ports", [])}
    assert all(not (p <= 8265 <= (e or p)) for _, p, e in opened), opened  # the dashboard is never admitted
    serve = pols["serve-from-ingress-controller"]["ingress"]
    assert [p["port"] for r in serve for p in r["ports"]] == [8000]
    # the pods the policies select carry the labels they are selected by
    writers = {d["metadata"]["name"] for d in _docs("stream-jobs.yaml") for t in _pod_templates(d)
               if t["metadata"]["labels"].get("argus.io/store-client") == "true"}
    assert writers == {"argus-fraud-stream", "argus-report-stream"}  # the two streams write the store (not the simulator)
    head = _rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert head["argus.io/store-client"] == "true"
