"""The fraud model registry (schema v8) on real PostgreSQL and SQLite: register, promote, rollback,
the audit trail, refusals in one line, the v7 -> v8 upgrade, `argus store init` / `argus models`."""

from __future__ import annotations

import math
import os
import shutil
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from pipelines.model_registry import CHAMPION, CHALLENGER, RETIRED, ModelRegistry, RegistryError, check_name
from pipelines.store import SCHEMA_VERSION, Store, _migrate
from tests.fixtures.ray_local import save_tiny_fraud_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two loadable tiny checkpoints, one with other history lengths, and a broken one."""
    import torch

    from models.checkpoint import save_task_model
    from models.fraud_scorer import FraudModel, FraudModelConfig

    root = tmp_path_factory.mktemp("ckpts")
    a = save_tiny_fraud_checkpoint(root / "a")
    b = shutil.copytree(a, root / "b")
    torch.manual_seed(3)
    other = FraudModel(FraudModelConfig.from_preset("tiny", customer_history=4))
    wide = save_task_model(root / "wide", other, {"task": "fraud", "fraud": other.config.to_dict(),
                                                  "model_version": "wide"}, dtype=None)
    broken = shutil.copytree(a, root / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    return {"a": a, "b": b, "wide": wide, "broken": broken}


@pytest.fixture
def registry(store_url):
    store = Store.from_url(store_url)
    store.create_schema()
    yield ModelRegistry(store)
    store.close()


def test_register_promote_rollback_with_an_audit_trail(registry, checkpoints):
    r = registry
    assert r.champion() is None and r.list() == []
    r.register("v1", checkpoints["a"], actor="ann", metrics={"challenger": {"ap": 0.5, "cp100": float("nan")}},
               data_window={"train": "2024-01-01 .. 2024-01-28"})
    assert r.get("v1").status == CHALLENGER and r.get("v1").metrics["challenger"] == {"ap": 0.5, "cp100": None}
    assert r.promote("v1", actor="ann").status == CHAMPION
    r.register("v2", checkpoints["b"], actor="trainer", parent="v1")
    r.register("v3", checkpoints["a"], actor="trainer", parent="v2")
    r.promote("v2", actor="bob")
    r.promote("v3", actor="bob")
    assert [v.version for v in r.list() if v.status == CHAMPION] == ["v3"]
    assert {v.version: v.status for v in r.list()} == {"v1": RETIRED, "v2": RETIRED, "v3": CHAMPION}
    # rollback walks back one promotion at a time
    assert r.rollback(actor="carol").version == "v2"
    assert r.rollback(actor="carol").version == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        r.rollback(actor="carol")
    assert r.champion().version == "v1" and r.get("v3").status == RETIRED
    events = r.events(100)
    assert [(e["action"], e["version"], e["previous"], e["actor"]) for e in events[:4]] == [
        ("rollback", "v1", "v2", "carol"), ("rollback", "v2", "v3", "carol"), ("promote", "v3", "v2", "bob"),
        ("promote", "v2", "v1", "bob")]
    assert all(e["at"].tzinfo is not None for e in events)
    assert r.store.count("model_registry") == 3 and r.store.count("model_registry_events") == 3 + 3 + 2


def test_refusals_are_one_line_and_change_nothing(registry, checkpoints):
    r = registry
    r.register("good", checkpoints["a"], actor="ann")
    r.promote("good", actor="ann")
    before = (r.list(), r.store.count("model_registry_events"))
    cases = [
        (lambda: r.promote("nope", actor="ann"), "unknown model version 'nope'"),
        (lambda: r.register("bad", checkpoints["broken"], actor="ann"), "does not load"),
        (lambda: r.register("gone", checkpoints["a"].parent / "missing", actor="ann"), "does not load"),
        (lambda: r.register("good", checkpoints["b"], actor="ann"), "already registered"),
        (lambda: r.promote("good", actor="ann"), "already the champion"),
        (lambda: r.rollback(actor="ann"), "nothing to roll back to"),
        (lambda: r.promote("good", actor=""), "actor must be 1 to 128"),
        (lambda: r.promote("x\ny", actor="ann"), "control"),
    ]
    for call, message in cases:
        with pytest.raises(RegistryError, match=message) as info:
            call()
        assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert (r.list(), r.store.count("model_registry_events")) == before


def test_a_checkpoint_broken_after_registration_or_of_another_layout_is_not_promoted(registry, checkpoints, tmp_path):
    r = registry
    r.register("a", checkpoints["a"], actor="ann")
    r.promote("a", actor="ann")
    r.register("wide", checkpoints["wide"], actor="ann")
    with pytest.raises(RegistryError, match="state layout"):
        r.promote("wide", actor="ann")
    later = shutil.copytree(checkpoints["b"], tmp_path / "later")
    r.register("later", later, actor="ann")
    (later / "model.safetensors").write_bytes(b"\0" * 10)  # the disk changed after registration
    with pytest.raises(RegistryError, match="checkpoint of later at .* does not load"):
        r.promote("later", actor="ann")
    assert r.champion().version == "a"


def test_store_init_registers_the_shipped_champion_once(store_url, checkpoints, monkeypatch):
    from services.cli import app

    import models.fraud_scorer as fs

    shipped = shutil.copytree(checkpoints["a"], checkpoints["a"].parent / f"shipped-{abs(hash(store_url))}")
    monkeypatch.setattr(fs, "SHIPPED_CHECKPOINT", shipped)
    first = CliRunner().invoke(app, ["store", "init", "--url", store_url])
    assert first.exit_code == 0, first.output
    assert "registered fraud-tiny-test" in first.output and "champion" in first.output
    again = CliRunner().invoke(app, ["store", "init", "--url", store_url])
    assert again.exit_code == 0 and "registered" not in again.output
    with Store.from_url(store_url) as store:
        r = ModelRegistry(store)
        assert [(v.version, v.status) for v in r.list()] == [("fraud-tiny-test", CHAMPION)]
        assert r.events()[0]["actor"] == "argus store init"


def test_cli_promote_and_rollback_are_audited_and_refusals_are_one_red_line(store_url, checkpoints):
    import subprocess
    import sys

    from services.cli import app

    with Store.from_url(store_url) as store:
        store.create_schema()
        r = ModelRegistry(store)
        for v, c in (("v1", "a"), ("v2", "b"), ("v3", "broken")):
            if v == "v3":
                c = shutil.copytree(checkpoints["a"], checkpoints["a"].parent / f"v3-{abs(hash(store_url))}")
                r.register(v, c, actor="t")
                (c / "model.safetensors").write_bytes(b"x")
            else:
                r.register(v, checkpoints[c], actor="t")
        r.promote("v1", actor="t")
    runner = CliRunner()
    ok = runner.invoke(app, ["models", "promote", "v2", "--by", "dora", "--url", store_url])
    assert ok.exit_code == 0 and "champion v2 (was v1)" in ok.output
    listing = runner.invoke(app, ["models", "list", "--url", store_url], env={"COLUMNS": "250"})
    assert listing.exit_code == 0 and "dora" in listing.output and "champion" in listing.output
    back = runner.invoke(app, ["models", "rollback", "--by", "eve", "--url", store_url])
    assert back.exit_code == 0 and "rolled back to v1 (was v2)" in back.output
    argus = [sys.executable, "-c", "from services.cli import main; main()"]
    for args, message in ((["promote", "v9"], "unknown model version 'v9'"), (["promote", "v3"], "does not load")):
        res = subprocess.run([*argus, "models", *args, "--url", store_url], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "1000"})
        assert res.returncode == 8 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    with Store.from_url(store_url) as store:
        events = ModelRegistry(store).events()
        assert [(e["action"], e["version"], e["actor"]) for e in events[:2]] == [("rollback", "v1", "eve"),
                                                                                ("promote", "v2", "dora")]
        assert ModelRegistry(store).champion().version == "v1"


def test_upgrade_from_v7_keeps_data_and_registers_nothing_by_itself(store_url):
    store = Store.from_url(store_url)
    with store.engine.begin() as conn:
        assert _migrate(conn, target=7) == 7
    assert "model_registry" not in inspect(store.engine).get_table_names()
    store.start_run("fraud-stream", "run-v7")  # a v7-era row survives
    assert store.create_schema() == SCHEMA_VERSION >= 8
    assert store.create_schema() == SCHEMA_VERSION
    names = inspect(store.engine).get_table_names()
    assert {"model_registry", "model_registry_events"} <= set(names)
    assert "model_registry_status_idx" in {i["name"] for i in inspect(store.engine).get_indexes("model_registry")}
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == SCHEMA_VERSION
    assert store.get_run("run-v7")["kind"] == "fraud-stream"
    assert store.count("model_registry") == 0 and store.stats()["model_registry_events"] == 0
    store.close()


def test_concurrent_promotions_leave_exactly_one_champion(fresh_pg_url, checkpoints):
    store = Store.from_url(fresh_pg_url)
    store.create_schema()
    r = ModelRegistry(store)
    for i in range(6):
        r.register(f"v{i}", checkpoints["a" if i % 2 else "b"], actor="t")
    errors = []

    def promote(v: str) -> None:
        try:
            ModelRegistry(store).promote(v, actor=f"by-{v}")
        except RegistryError as exc:  # "already the champion" is the only acceptable refusal
            errors.append(str(exc))

    threads = [threading.Thread(target=promote, args=(f"v{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    champions = [v.version for v in r.list() if v.status == CHAMPION]
    assert len(champions) == 1 and all("already the champion" in e for e in errors), (champions, errors)
    promotes = [e for e in r.events(100) if e["action"] == "promote"]
    assert promotes[0]["version"] == champions[0]
    # the previous champions form one chain: each promotion names the champion it replaced
    assert [e["previous"] for e in promotes[:-1]] == [e["version"] for e in promotes[1:]]
    store.close()


# --- input boundaries ------------------------------------------------------------------------------

names = st.one_of(st.text(max_size=200), st.text(alphabet=st.characters(codec="utf-8"), min_size=100, max_size=5000),
                  st.sampled_from(["", " ", "v1 ", "\x00", "a\u2028b", "é" * 128, "é" * 129, "v" * 128]),
                  st.integers(), st.none(), st.binary(max_size=20))


@settings(max_examples=300, deadline=None)
@given(names)
def test_names_are_checked_before_the_database(value):
    try:
        assert check_name(value, "version") == value
    except RegistryError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    assert isinstance(value, str) and 1 <= len(value) <= 128 and value == value.strip()


json_values = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**62, max_value=2**62) | st.floats()
                           | st.text(max_size=30), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(version=names, metrics=st.dictionaries(st.text(max_size=20), json_values, max_size=6))
def test_hostile_versions_and_metrics_never_break_the_store(sqlite_url, checkpoints, version, metrics):
    store = Store.from_url(sqlite_url)
    store.create_schema()
    r = ModelRegistry(store)
    try:
        got = r.register(version, checkpoints["a"], actor="fuzz", metrics=metrics)
    except RegistryError as exc:
        assert "\n" not in str(exc)
    else:
        def finite(x):
            if isinstance(x, float):
                return x if math.isfinite(x) else None
            if isinstance(x, dict):
                return {str(k): finite(v) for k, v in x.items()}
            if isinstance(x, list):
                return [finite(v) for v in x]
            return x

        assert got.version == version and got.metrics == finite(metrics)
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM model_registry"))
    store.close()
