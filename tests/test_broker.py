"""The embedded broker's lifecycle, against the real tansu binary."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from infra.broker_binary import broker_binary
from infra.local_broker import read_state, resolve_settings, start, status, stop
from pipelines.errors import BrokerError
from pipelines.kafka_io import create_topics, topic_partitions, wait_for_broker
from pipelines.settings import Settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def _running(pid: int) -> bool:
    """The process exists and is not a zombie. A broker that was not our child is reaped by init, which
    can take a moment on a loaded machine: until then kill(pid, 0) still succeeds on the zombie (a fresh-clone
    CI run failed there), but the broker has stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:  # gone between the two calls
        return False


def _settings(tmp_path: Path) -> Settings:
    return Settings(broker={"state_dir": tmp_path / "broker", "port": 0, "start_timeout_s": 15})


def test_up_metadata_topics_partitions_down(tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    state = start(settings, port=0, partitions=3)
    try:
        assert read_state(settings.broker.state_dir).pid == state.pid
        admin = KafkaAdminClient(bootstrap_servers=state.bootstrap)
        try:
            assert set(settings.topics.all()) <= set(admin.list_topics())
        finally:
            admin.close()
        for topic in settings.topics.all():
            assert topic_partitions(state.bootstrap, topic) == 3
        info = status(settings)
        assert info["running"] and info["reachable"] and info["bootstrap"] == state.bootstrap
        # `up` again reuses the running broker instead of failing or starting a second one
        again = start(settings, port=None)
        assert again.pid == state.pid
        # topic creation is idempotent
        assert create_topics(state.bootstrap, settings.topics.all(), 3) == []
        # other commands find the running embedded broker unless the bootstrap is set explicitly
        monkeypatch.delenv("ARGUS_KAFKA__BOOTSTRAP_SERVERS", raising=False)
        assert resolve_settings(settings).kafka.bootstrap_servers == state.bootstrap
        monkeypatch.setenv("ARGUS_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
        assert resolve_settings(settings).kafka.bootstrap_servers == settings.kafka.bootstrap_servers
    finally:
        stopped = stop(settings)
    assert stopped is not None and stopped.pid == state.pid
    assert read_state(settings.broker.state_dir) is None
    assert not _running(state.pid)
    assert status(settings)["running"] is False
    assert stop(settings) is None  # down twice is harmless


def test_port_taken_is_one_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
            start(_settings(tmp_path), port=port)
    assert read_state(tmp_path / "broker") is None


def test_missing_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGUS_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerError, match="no-such-tansu is not a file"):
        start(_settings(tmp_path), port=0)
    # the Makefile's check: non-zero, one line on stderr
    out = subprocess.run([sys.executable, "-m", "infra.broker_binary", "--check"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "ARGUS_TANSU_BIN": str(tmp_path / "no-such-tansu")})
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and "not a file" in out.stderr


def test_check_prints_path_and_version():
    out = subprocess.run([sys.executable, "-m", "infra.broker_binary", "--check"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(broker_binary()) in out.stdout and "tansu 0.6" in out.stdout


def _fake_binary(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-tansu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_broker_that_never_answers_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGUS_TANSU_BIN", str(_fake_binary(tmp_path, "exec sleep 30")))
    with pytest.raises(BrokerError, match="did not come up within 1s"):
        start(_settings(tmp_path), port=0, timeout=1.0)
    assert read_state(tmp_path / "broker") is None


def test_broker_that_exits_reports_its_output(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGUS_TANSU_BIN", str(_fake_binary(tmp_path, "echo 'storage engine exploded'; exit 3")))
    with pytest.raises(BrokerError, match="exited with code 3.*storage engine exploded"):
        start(_settings(tmp_path), port=0, timeout=5.0)


def test_unsupported_storage_engine_is_reported(tmp_path):
    with pytest.raises(BrokerError, match="FeatureNotEnabled"):
        start(_settings(tmp_path), port=0, storage_engine="postgres://postgres@127.0.0.1/test", timeout=10.0)


def test_wait_for_unreachable_broker():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrokerError, match=f"broker at 127.0.0.1:{port} not reachable after 1s"):
        wait_for_broker(f"127.0.0.1:{port}", 1.0)


def test_cli_up_status_down(tmp_path):
    env = {**os.environ, "ARGUS_HOME": str(tmp_path), "ARGUS_BROKER__STATE_DIR": str(tmp_path / "broker")}
    env.pop("ARGUS_KAFKA__BOOTSTRAP_SERVERS", None)
    argus = [sys.executable, "-c", "from services.cli import main; main()"]

    def run(*args):
        return subprocess.run(argus + list(args), cwd=REPO, capture_output=True, text=True, env=env, timeout=60)

    up = run("infra", "up", "--port", "0", "--partitions", "2")
    try:
        assert up.returncode == 0, up.stderr
        state = read_state(tmp_path / "broker")
        assert state is not None and state.partitions == 2 and f"broker up at {state.bootstrap}" in up.stdout
        st = run("infra", "status")
        assert st.returncode == 0 and "True" in st.stdout and "argus.transactions" in st.stdout
    finally:
        down = run("infra", "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    st = run("infra", "status")
    assert st.returncode == 1 and "not running" in st.stdout
