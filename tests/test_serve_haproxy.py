"""`argus serve --ha-proxy` from a checkout whose path is long: HAProxy's socket paths must fit its
97-character limit once Ray Serve adds its 56-character node folder, and a stop leaves no HAProxy
process and no folder behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.local_serve import HAPROXY_SOCKET_PATH_MAX, haproxy_files_dir

ROOT = Path(__file__).resolve().parents[1]
RAY_NODE_FOLDER = 1 + 56


def test_short_temp_keeps_haproxy_files_beside_it():
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    folder, separate = haproxy_files_dir(temp)
    try:
        assert folder == temp / "haproxy" and not separate
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_long_temp_moves_haproxy_files_to_a_short_folder(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 4)
    folder, separate = haproxy_files_dir(deep)
    try:
        assert separate and not str(folder).startswith(str(deep))
        longest = str(folder) + "/" + "f" * (RAY_NODE_FOLDER - 1) + "/metrics.sock"
        assert len(longest) <= HAPROXY_SOCKET_PATH_MAX
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.slow
def test_ha_proxy_serve_from_a_long_checkout_path_answers_and_stops_clean(tmp_path):
    home = tmp_path.joinpath(*["checkout-of-argus-somewhere-deep"] * 3)  # Ray's temp dir lands under it
    home.mkdir(parents=True)
    port = _free_port()
    env = {**os.environ, "ARGUS_HOME": str(home), "ARGUS_STORE__URL": f"sqlite:///{home}/s.db",
           "HF_HUB_OFFLINE": "1"}
    before = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "argus"), "serve", "--ha-proxy", "--port", str(port),
                             "--num-cpus", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline, answered = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # HAProxy answers 404 until Serve has given it the app's routes
                answered = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if answered.status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert answered is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 240 s"
        assert answered.status_code in (200, 503)  # 503 while the models load: HAProxy forwarded it
        ours = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy" and p.pid not in before]
        assert ours, "the ingress is not HAProxy"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    time.sleep(1)
    left = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy" and p.pid not in before]
    assert not left, f"HAProxy left running after the stop: {[p.pid for p in left]}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
