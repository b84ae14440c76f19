"""The fraud stream on Ray: one `FraudStreamActor` per Kafka consumer, all in one consumer group.

Scale-out is more actors, up to the partition count of the transactions topic (more would sit
idle). Each actor builds its own `FraudStreamJob` (consumer, producer, store connection, scorer,
the states of the partitions it owns) inside its worker process, so killing an actor (ray.kill,
SIGKILL of its process) loses nothing that was not committed: the group rebalances its partitions
to the others (or to a replacement actor), which restore the partitions' state from the store.

The actor is threaded (max_concurrency > 1) so `stop()` and `counts()` answer while `run()` loops.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray

from pipelines.settings import Settings
from services.local_ray import ensure_ray

log = logging.getLogger("argus.fraud_stream")


@ray.remote(max_concurrency=4)
class FraudStreamActor:
    def __init__(self, settings_data: dict[str, Any], store_url: str, name: str, checkpoint: str | None = None,
                 metrics_port: int | None = None, json_logs: bool = True, config: dict[str, Any] | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        from pipelines.fraud_stream import build_job, configure_json_logging

        if json_logs:
            configure_json_logging()
        settings = Settings(**settings_data)
        self.name = name
        self.job = build_job(settings, store_url, checkpoint=checkpoint, name=name, metrics_port=metrics_port,
                             **(config or {}))

    def run(self, seconds: float | None = None, idle_exit_s: float | None = None) -> dict[str, int]:
        return self.job.run(seconds=seconds, idle_exit_s=idle_exit_s).as_dict()

    def stop(self) -> None:
        self.job.stop()

    def counts(self) -> dict[str, int]:
        return self.job.counts.as_dict()

    def pid(self) -> int:
        return os.getpid()

    def metrics_text(self) -> str:
        return self.job.metrics.render().decode()


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
    """Run the stream on Ray until `seconds` pass (or idle, or Ctrl-C); returns each actor's counts."""
    stop_ray = ensure_ray()
    try:
        actors = start_actors(settings, store_url, consumers, checkpoint, metrics_port, num_cpus, **config)
        refs = [a.run.remote(seconds, idle_exit_s) for a in actors]
        try:
            return ray.get(refs)
        except KeyboardInterrupt:
            for a in actors:
                a.stop.remote()
            deadline = time.monotonic() + 30
            return [ray.get(r, timeout=max(1.0, deadline - time.monotonic())) for r in refs]
    finally:
        stop_ray()
