"""The production manifests stay consistent with the settings and the Serve config (parsed, not deployed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.settings import Settings

PROD = Path(__file__).resolve().parent.parent / "infra" / "production"


def _rayservice() -> dict:
    return yaml.safe_load((PROD / "rayservice.yaml").read_text())


def test_every_file_is_marked_production_only():
    for path in PROD.iterdir():
        assert "PRODUCTION ONLY" in path.read_text()[:300], path.name


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
    assert settings.kafka.bootstrap_servers == "argus-kafka-kafka-bootstrap.argus.svc:9092"
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
    compose = (PROD / "docker-compose.kafka.yaml").read_text()
    assert all(t in compose for t in topics)
