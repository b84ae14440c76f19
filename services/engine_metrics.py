"""Ray metrics of a model replica's generation engine: its queue and its batch occupancy.

The Summarizer deployment on a GPU runs `models.engine` (continuous batching); after each batch it
sets these gauges, which Ray's metrics agent exports to Prometheus with the replica's own tags:

    argus_summarizer_queued             requests in this replica, waiting for a batch or in one
    argus_summarizer_engine_decoding    requests decoding in the engine now
    argus_summarizer_engine_prefilling  requests holding a slot, prompt not yet all prefilled
    argus_summarizer_engine_waiting     requests waiting for an engine slot
    argus_summarizer_engine_batch_occupancy   mean real rows per decode step / slots (0..1), so far
    argus_summarizer_engine_mean_decode_batch mean real rows per decode step, so far
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ENGINE_KEYS = ("decoding", "prefilling", "waiting", "batch_occupancy", "mean_decode_batch")


def _ray_gauge(name: str, description: str) -> Any:
    from ray.util.metrics import Gauge

    return Gauge(name, description=description)


class EngineGauges:
    """One gauge per figure; `gauge(name, description)` makes one (Ray's Gauge by default)."""

    def __init__(self, prefix: str = "argus_summarizer", gauge: Callable[[str, str], Any] = _ray_gauge):
        self.queued = gauge(f"{prefix}_queued", "Requests in this replica, waiting for a batch or in one")
        self.engine = {key: gauge(f"{prefix}_engine_{key}", f"Generation engine: {key.replace('_', ' ')}")
                       for key in ENGINE_KEYS}

    def set_queued(self, n: int) -> None:
        self.queued.set(float(n))

    def report(self, occupancy: dict[str, float | int] | None) -> None:
        """The engine's `occupancy()`; None (transformers backend, no engine) sets nothing."""
        if occupancy is None:
            return
        for key, g in self.engine.items():
            g.set(float(occupancy[key]))
