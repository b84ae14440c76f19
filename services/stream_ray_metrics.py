"""A stream consumer's (or an Ingress replica's) metrics through Ray's metrics API as well, so one
scrape per node holds them all.

Each consumer actor keeps its own prometheus_client registry (`--metrics-port`, the tests). With
`metrics.ray` on (ARGUS_METRICS__RAY=true) every metric updated once per batch is also recorded with
`ray.util.metrics`; the Ray metrics agent of the node the actor runs on exports it (`ray start
--metrics-export-port`) as `ray_<name>` with the same labels plus Ray's own (WorkerId, NodeAddress...),
wherever the actor was placed. Per-record metrics (the score histogram, duplicates) stay local: a Ray
call per record would cost the stream (benchmarks/ray_metrics_cost.py: a mirrored update takes
~4 us where a local one takes 0.4-1.7 us; a batch makes about 15, ~40 us). An Ingress replica
(services/metrics.py) does the same with `metrics.ray`: its /metrics answers for one replica only,
Ray's agents for all of them (`ray_argus_http_*`, `ray_argus_model_*`; about 5 calls a request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typing import TypeVar

M = TypeVar("M")
PER_RECORD = frozenset({"scores", "duplicates"})


def _ray_metric(kind: str, name: str, description: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]) -> Any:
    from ray.util import metrics

    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=labelnames)
    if kind == "gauge":
        return metrics.Gauge(name, description=description, tag_keys=labelnames)
    return metrics.Histogram(name, description=description, boundaries=list(buckets), tag_keys=labelnames)


class _Child:
    """One label set: updates the local series and the Ray metric with the same values."""

    __slots__ = ("_local", "_ray", "_tags")

    def __init__(self, local: Any, ray_metric: Any, tags: dict[str, str]):
        self._local, self._ray, self._tags = local, ray_metric, tags

    def inc(self, amount: float = 1.0) -> None:
        self._local.inc(amount)
        if amount > 0:  # Ray's Counter refuses 0
            self._ray.inc(amount, tags=self._tags)

    def set(self, value: float) -> None:
        self._local.set(value)
        self._ray.set(value, tags=self._tags)

    def observe(self, value: float) -> None:
        self._local.observe(value)
        self._ray.observe(value, tags=self._tags)


class _Mirrored:
    def __init__(self, local: Any, ray_metric: Any):
        self._local, self._ray = local, ray_metric
        self._labelnames = tuple(local._labelnames)

    def labels(self, *values: Any) -> _Child:
        return _Child(self._local.labels(*values), self._ray, dict(zip(self._labelnames, map(str, values))))

    def __getattr__(self, name: str) -> Any:  # anything else (collect, describe...) is the local metric's
        return getattr(self._local, name)


def mirror_to_ray(metrics: M, make: Callable[..., Any] | None = None) -> M:
    """Make every per-batch metric of `metrics` (StreamMetrics, IngressMetrics) also record through
    Ray (in place; returns it).
    The names, labels and buckets are the local metrics' own (prometheus_client 0.2x attributes)."""
    for attr, local in list(vars(metrics).items()):
        kind = getattr(local, "_type", None)
        if attr in PER_RECORD or kind not in ("counter", "gauge", "histogram"):
            continue
        name = local._name + ("_total" if kind == "counter" else "")
        buckets = tuple(b for b in getattr(local, "_upper_bounds", ()) if b != float("inf"))
        factory = make or _ray_metric
        setattr(metrics, attr, _Mirrored(local, factory(kind, name, local._documentation, tuple(local._labelnames), buckets)))
    return metrics
