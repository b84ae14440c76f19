"""Run the Argus Serve application on a local Ray: what `argus serve` and the test fixture use.

It deploys the Serve config YAML (infra/serve.yaml) exactly as `serve deploy` would, on a Ray
started here with the dashboard off, access logs off and a `_temp_dir` that is removed on stop.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ArgusError

APP_NAME = "argus"


class ServeStartError(ArgusError):
    """The Serve application could not be deployed (bad config, a deployment failed to start)."""

    exit_code = 5


def load_config(path: str | Path, *, host: str | None = None, port: int | None = None,
                args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a Serve config YAML and apply command-line overrides (host, port, app args)."""
    path = Path(path)
    if not path.is_file():
        raise ServeStartError(f"serve config {path} not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ServeStartError(f"serve config {path} is not valid YAML: {exc}") from None
    return override(config, host=host, port=port, args=args)


def override(config: dict[str, Any], *, host: str | None = None, port: int | None = None,
             args: dict[str, Any] | None = None,
             deployments: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    config = copy.deepcopy(config)
    http = config.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port:
        http["port"] = int(port)
    app = config["applications"][0]
    app.setdefault("args", {}).update(args or {})
    for name, knobs in (deployments or {}).items():
        for d in app.setdefault("deployments", []):
            if d["name"] == name:
                break
        else:
            d = {"name": name}
            app["deployments"].append(d)
        for key, value in knobs.items():  # None removes a knob (e.g. autoscaling_config for fixed replicas)
            if value is None:
                d.pop(key, None)
            else:
                d[key] = value
    return config


# HAProxy refuses a unix socket path over 97 characters, and Ray Serve puts each node's HAProxy files
# under <the configured folder>/<56-hex node id>/: the folder itself must stay short.
HAPROXY_SOCKET_PATH_MAX = 97
_RAY_NODE_SUBDIR = 1 + 56
_LONGEST_HAPROXY_FILE = "/metrics.sock"


def haproxy_files_dir(temp: Path) -> tuple[Path, bool]:
    """Where this Ray's HAProxy keeps its config, sockets and state: beside Ray's temp files when the
    socket paths fit HAProxy's limit there, else a short private folder under /tmp. Returns the folder
    and whether it is a separate one (to remove on stop)."""
    beside = temp / "haproxy"
    if len(str(beside)) + _RAY_NODE_SUBDIR + len(_LONGEST_HAPROXY_FILE) <= HAPROXY_SOCKET_PATH_MAX:
        beside.mkdir(parents=True, exist_ok=True)
        return beside, False
    return Path(tempfile.mkdtemp(prefix="argus-hap-", dir="/tmp")), True


def stop_haproxy(files: Path, timeout_s: float = 5.0) -> int:
    """Stop the HAProxy processes that read their config under `files`. Ray Serve starts HAProxy as a
    child of its proxy actor; when the controller does not shut down in time (a loaded machine), Ray
    kills the actor and HAProxy is left running, holding the port. Returns how many were stopped."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and os.path.basename(cmd[0]) == "haproxy" and any(str(files) in arg for arg in cmd):
            mine.append(proc)
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(mine)


@dataclass
class LocalServe:
    url: str
    temp_dir: Path
    own_ray: bool
    haproxy_dir: Path | None = None  # a separate short folder for HAProxy's sockets, removed on stop
    haproxy_files: Path | None = None  # where this Ray's HAProxy reads its config (to find the process)

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            if self.own_ray:
                ray.shutdown()
                if self.haproxy_files is not None:
                    stop_haproxy(self.haproxy_files)
                shutil.rmtree(self.temp_dir, ignore_errors=True)
                if self.haproxy_dir is not None:
                    shutil.rmtree(self.haproxy_dir, ignore_errors=True)


def start(config: dict[str, Any], *, num_cpus: int | None = None, temp_dir: str | Path | None = None,
          ha_proxy: bool = False, timeout_s: float = 180.0, progress=None) -> LocalServe:
    """Start (or join) a local Ray, deploy `config`, wait until the app is RUNNING; return its URL."""
    import ray
    from ray.serve._private import api as serve_api

    from services.local_ray import short_temp_dir
    from ray.serve.schema import ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate(config)
    except Exception as exc:
        raise ServeStartError(f"invalid serve config: {exc}") from None

    os.environ.setdefault("RAY_SERVE_ENABLE_ACCESS_LOG", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ha_proxy:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise ServeStartError("--ha-proxy needs the haproxy binary (apt-get install haproxy)")
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ.setdefault("RAY_SERVE_HAPROXY_BINARY_PATH", haproxy)
    else:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"

    own_ray = not ray.is_initialized()
    temp = Path(temp_dir) if temp_dir else short_temp_dir()
    haproxy_dir = hap = None
    if own_ray:
        temp.mkdir(parents=True, exist_ok=True)
        if ha_proxy:  # this Ray's own HAProxy files (the defaults are one shared /tmp/haproxy-serve);
            # set, not setdefault: a second start in one process must not reuse a removed folder
            hap, separate = haproxy_files_dir(temp)
            haproxy_dir = hap if separate else None
            for var, name in [("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "haproxy.cfg"),
                              ("RAY_SERVE_HAPROXY_SOCKET_PATH", "admin.sock"),
                              ("RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", "metrics.sock"),
                              ("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", ""),
                              ("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", "server-state")]:
                os.environ[var] = str(hap / name) if name else str(hap)
        from services.local_ray import quiet_ray_auth

        quiet_ray_auth()
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False,
                 namespace="serve", configure_logging=False)
        if threading.current_thread() is threading.main_thread():
            # ray.init installs a C handler that aborts the process on SIGTERM (exit -6, HAProxy left
            # running); while starting, SIGTERM interrupts like Ctrl-C so the stop below cleans up
            signal.signal(signal.SIGTERM, signal.default_int_handler)
    http = schema.http_options
    handle = LocalServe(url=f"http://{http.host}:{http.port}", temp_dir=temp, own_ray=own_ray, haproxy_dir=haproxy_dir,
                        haproxy_files=hap if own_ray and ha_proxy else None)
    try:
        client = serve_api.serve_start(http_options=http.model_dump(), proxy_location=schema.proxy_location)
        client.deploy_apps(schema)
        for app in schema.applications:
            wait_running(app.name, timeout_s, progress)
    except BaseException:
        handle.stop()
        raise
    return handle


def wait_running(app_name: str, timeout_s: float, progress=None) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        status = app.status if app else "NOT_STARTED"
        if status != last and progress:
            progress(f"application {app_name}: {status}")
        last = status
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            detail = app.message or "; ".join(f"{n}: {d.message}" for n, d in app.deployments.items() if d.message)
            raise ServeStartError(f"application {app_name} {status}: {detail.strip()[:2000]}")
        time.sleep(0.25)
    app = serve.status().applications.get(app_name)
    detail = "; ".join(f"{n}: {d.status} {d.message}".strip() for n, d in app.deployments.items()) if app else ""
    raise ServeStartError(f"application {app_name} not RUNNING after {timeout_s:.0f} s (last status {last}): "
                          f"{detail[:1500]} (too few CPUs for the replicas? see ray_actor_options / model_num_cpus)")
