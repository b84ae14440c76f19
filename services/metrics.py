"""Prometheus metrics of the REST ingress, on a registry of its own (one per ingress replica).

Scrape `GET /metrics` on every ingress replica (or let Ray's metrics agent do it); the counts are
per replica, so sum them in Prometheus.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from pipelines.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, SCORE_BUCKETS  # noqa: F401 - re-exported


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("argus_http_requests_total", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("argus_http_request_duration_seconds", "Request latency inside the ingress",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.scores = Histogram("argus_fraud_score", "Fraud scores returned", buckets=SCORE_BUCKETS,
                                registry=self.registry)
        self.decisions = Counter("argus_fraud_decisions_total", "Fraud decisions returned", ["decision"],
                                 registry=self.registry)
        # Reported by the model deployment with each result: the size of the @serve.batch call that
        # served it (so it is weighted by requests, not by batches).
        self.batch_size = Histogram("argus_model_batch_size", "Size of the model batch that served a request",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        # which model versions answer (a rollout shows as two versions side by side on the dashboard)
        self.model_results = Counter("argus_model_results_total", "Results returned, by model and model version",
                                     ["model", "version"], registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
