"""The fraud stream on Ray: one `FraudStreamActor` per Kafka consumer, all in one consumer group.

Scale-out is more actors, up to the partition count of the transactions topic (more would sit
idle). Each actor builds its own `FraudStreamJob` (consumer, producer, store connection, scorer,
the states of the partitions it owns) inside its worker process, so killing an actor (ray.kill,
SIGKILL of its process) loses nothing that was not committed: the group rebalances its partitions
to the others (or to a replacement actor), which restore the partitions' state from the store.

The actor is threaded (max_concurrency > 1) so `stop()` and `counts()` answer while `run()` loops.

Supervision: actors are created with `max_restarts` (Ray restarts a dead one's process, with
backoff here between attempts), and `run_stream` resubmits `run()` to a restarted actor; restarts
are counted and returned. SIGTERM / SIGINT of the driver stop every actor gracefully: each
finishes its batch, writes, snapshots and returns its counts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import ray

from pipelines.settings import Settings
from services.local_ray import ensure_ray

log = logging.getLogger("argus.fraud_stream")


MAX_RESTARTS = 20


@ray.remote(max_concurrency=4, max_restarts=MAX_RESTARTS)
class FraudStreamActor:
    """One consumer. The constructor does no I/O but loading the model (a constructor that raises
    leaves a dead actor that Ray does not restart); the job - its broker and store connections - is
    built by `run()`, retried with backoff while the broker or the store is unreachable."""

    def __init__(self, settings_data: dict[str, Any], store_url: str, name: str, checkpoint: str | None = None,
                 metrics_port: int | None = None, json_logs: bool = True, config: dict[str, Any] | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        from pipelines.fraud_stream import configure_json_logging, load_scorer
        from pipelines.metrics import StreamMetrics

        if json_logs:
            configure_json_logging()
        self.settings = Settings(**settings_data)
        self.name, self.store_url, self.config = name, store_url, config or {}
        self.scorer = load_scorer(checkpoint)
        self.checkpoint = checkpoint  # pinned: not following the registry
        self.metrics = StreamMetrics()
        if self.settings.metrics.ray:
            from services.stream_ray_metrics import mirror_to_ray

            mirror_to_ray(self.metrics)
        if metrics_port:
            self.metrics.serve(metrics_port, self.settings.metrics.host)
        self.job = None
        self._stop = threading.Event()

    def _build(self) -> bool:
        """Build the job, retrying what the broker or the store refuse; False if stopped meanwhile."""
        from pipelines.fraud_stream import FraudStreamJob, StreamConfig, follow_registry
        from pipelines.store import Store
        from pipelines.stream_runtime import TRANSIENT, RetryPolicy

        delays = RetryPolicy(0.2, 5.0).delays()
        while self.job is None:
            try:
                config = StreamConfig.from_settings(self.settings, **self.config)
                store = Store.from_url(self.store_url)
                self.job = FraudStreamJob(self.settings, store, self.scorer, config, self.metrics, name=self.name,
                                          models=follow_registry(self.settings, store, self.scorer, self.checkpoint,
                                                                 self.name))
            except TRANSIENT as exc:
                delay = next(delays)
                log.warning("consumer %s cannot start yet (%s); retrying in %.1f s", self.name,
                            type(exc).__name__, delay)
                if self._stop.wait(delay):
                    return False
        return True

    def run(self, seconds: float | None = None, idle_exit_s: float | None = None) -> dict[str, int]:
        if not self._build():
            return {}
        return self.job.run(seconds=seconds, idle_exit_s=idle_exit_s).as_dict()

    def stop(self) -> None:
        self._stop.set()
        if self.job is not None:
            self.job.stop()

    def counts(self) -> dict[str, int]:
        return self.job.counts.as_dict() if self.job is not None else {}

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def metrics_text(self) -> str:
        return self.metrics.render().decode()


def settings_data(settings: Settings) -> dict[str, Any]:
    """What an actor needs to rebuild the settings (the store URL travels separately: it is a secret)."""
    return settings.model_dump(mode="python", exclude={"store", "serve"})


def start_actors(settings: Settings, store_url: str, consumers: int = 1, checkpoint: str | None = None,
                 metrics_port: int | None = None, num_cpus: float = 1.0, first_index: int = 0,
                 **config: Any) -> list[Any]:
    """Start `consumers` actors (capped at the partition count); metrics on metrics_port + index."""
    from pipelines.kafka_io import topic_partitions

    partitions = topic_partitions(settings.kafka.bootstrap_servers, config.get("transactions_topic")
                                  or settings.topics.transactions) or consumers
    n = max(1, min(consumers, partitions))
    if n < consumers:
        log.warning("more consumers than partitions; starting %d", n)
    data = settings_data(settings)
    return [FraudStreamActor.options(num_cpus=num_cpus).remote(
        data, store_url, f"fraud-{first_index + i}", checkpoint,
        None if not metrics_port else metrics_port + first_index + i, True, config) for i in range(n)]


def run_stream(settings: Settings, store_url: str, consumers: int = 1, seconds: float | None = None,
               idle_exit_s: float | None = None, checkpoint: str | None = None, metrics_port: int | None = None,
               num_cpus: float = 1.0, **config: Any) -> list[dict[str, int]]:
    """Run the stream on Ray until `seconds` pass (or idle, or SIGTERM/Ctrl-C: graceful); returns
    each actor's counts, with `restarts` (how often its process died and was restarted)."""
    from services.shutdown import stop_on_signals

    from pipelines.store import Store

    stop_ray = ensure_ray()
    store = Store.from_url(store_url)
    try:
        store.create_schema()
        run_id = store.start_run("fraud-stream")
        signalled = {"stop": False}

        def guard(stop_all):
            from contextlib import contextmanager

            @contextmanager
            def watch():
                with stop_on_signals(stop_all) as request:
                    yield request
                signalled["stop"] = request.requested
            return watch()

        actors = start_actors(settings, store_url, consumers, checkpoint, metrics_port, num_cpus, **config)
        status = "failed"
        results: list[dict[str, int]] = []
        try:
            results = supervise(actors, seconds, idle_exit_s, guard)
            status = "interrupted" if signalled["stop"] else "ok"
            return results
        finally:
            totals = {k: sum(r.get(k, 0) for r in results) for k in (results[0] if results else {})}
            store.finish_run(run_id, counts=totals, status=status)
    finally:
        store.close()
        stop_ray()


def supervise(actors: list[Any], seconds: float | None, idle_exit_s: float | None, stop_on_signals=None,
              backoff_s: float = 1.0) -> list[dict[str, int]]:
    """Run every actor; resubmit `run()` to an actor Ray restarted (with exponential backoff)."""
    import contextlib

    start = time.monotonic()
    restarts = [0] * len(actors)
    results: list[dict[str, int] | None] = [None] * len(actors)
    stopping = {"now": False}

    def left() -> float | None:
        return None if seconds is None else max(0.0, seconds - (time.monotonic() - start))

    def stop_all() -> None:
        stopping["now"] = True
        for a in actors:
            try:
                a.stop.remote()
            except Exception:  # noqa: BLE001 - a dead actor has nothing to stop
                pass

    refs = {a.run.remote(seconds, idle_exit_s): i for i, a in enumerate(actors)}
    guard = stop_on_signals(stop_all) if stop_on_signals else contextlib.nullcontext()
    with guard:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in ready:
                i = refs.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                    remaining = left()
                    if stopping["now"] or restarts[i] >= MAX_RESTARTS or (remaining is not None and remaining <= 0):
                        log.warning("consumer actor %d ended: %s", i, type(exc).__name__)
                        continue
                    restarts[i] += 1
                    time.sleep(min(30.0, backoff_s * 2 ** (restarts[i] - 1)))
                    log.warning("consumer actor %d died (%s); restart %d", i, type(exc).__name__, restarts[i])
                    refs[actors[i].run.remote(left(), idle_exit_s)] = i
    return [{**(r or {}), "restarts": restarts[i]} for i, r in enumerate(results)]
