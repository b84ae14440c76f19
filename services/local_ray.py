"""Ray for one command: join the Ray already running (a cluster via RAY_ADDRESS, a test fixture) or
start a local one with the dashboard off and a short temp dir that is removed afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray


def quiet_ray_auth() -> None:
    """Keep Ray's token authentication on, saying so explicitly (left unset, Ray enables it anyway and
    prints a notice on every start). Ray reads the variable when first imported, so services/__init__.py
    sets it before any import of Ray; this only checks it is still set."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def short_temp_dir(prefix: str = "ar") -> Path:
    """A fresh temp dir for one Ray under /tmp, whatever the checkout's path: Ray's unix sockets
    (<temp>/session_<date>_<pid>/sockets/plasma_store, ~70 characters below it) must fit in 107 bytes,
    and HAProxy's (another 70 below) in 97."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def ensure_ray(num_cpus: int | None = None) -> Any:
    """Use the Ray already initialised (a cluster, a test fixture), else start a local one with the
    dashboard off and a short temp dir. Returns a function that undoes what was started here."""
    if ray.is_initialized():
        return lambda: None
    quiet_ray_auth()
    temp = short_temp_dir("rb")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False,
                 configure_logging=False)

    def stop() -> None:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    return stop
