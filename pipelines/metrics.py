"""Prometheus metrics of a stream job, on a registry of its own (one per consumer actor).

Each consumer actor serves `GET /metrics` on its own port (`metrics_port + consumer index`); sum
over actors in Prometheus. The buckets defined here are shared with the REST ingress
(`services.metrics`) so the two score histograms can be compared directly.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

# shared with the REST ingress (services/metrics.py), so the two score histograms compare directly
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STREAM_BATCH_BUCKETS = BATCH_BUCKETS + (1024, 2048, 4096)


def reason_kind(reason: str) -> str:
    """A low-cardinality label for a dead-letter reason (the reason text itself is unbounded):
    'malformed json', 'schema', 'duplicate', or the expectation name of a validation failure."""
    r = reason.lower()
    if r.startswith("malformed json"):
        return "malformed_json"
    if r.startswith("oversized"):
        return "oversized"
    if r.startswith("unsupported schema_version"):
        return "schema_version"
    if r.startswith("duplicate"):
        return "duplicate_transaction_id"
    m = re.match(r"(expect_[a-z_]+)", r)
    if m:
        return m.group(1)
    return "schema"


class StreamMetrics:
    def __init__(self, job: str = "fraud") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter("argus_stream_records_consumed_total", "Records read from Kafka", ["job", "topic"],
                                registry=r)
        self.scored = Counter("argus_stream_scored_total", "Transactions scored and written", ["job"], registry=r)
        self.lag = Gauge("argus_stream_consumer_lag", "Records behind the partition end (highwater - position)",
                         ["job", "topic", "partition"], registry=r)
        self.batch_latency = Histogram("argus_stream_batch_seconds", "One micro-batch, first poll to offset commit",
                                       ["job"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_latency = Histogram("argus_stream_step_seconds", "Time in each named step of a micro-batch",
                                      ["job", "step"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("argus_stream_batch_size", "Records per micro-batch", ["job"],
                                    buckets=STREAM_BATCH_BUCKETS, registry=r)
        self.scores = Histogram("argus_fraud_stream_score", "Fraud scores written by the stream", ["job"],
                                buckets=SCORE_BUCKETS, registry=r)
        self.dead_letters = Counter("argus_stream_dead_letters_total", "Records dead-lettered, by stage and reason kind",
                                    ["job", "stage", "reason"], registry=r)
        self.alerts = Counter("argus_stream_alerts_total", "Alerts published", ["job"], registry=r)
        self.duplicates = Counter("argus_stream_duplicates_total", "Same-payload duplicates skipped", ["job"], registry=r)
        self.labels = Counter("argus_stream_labels_total", "Labels applied to the risk state", ["job"], registry=r)
        self.dispositions = Counter("argus_stream_dispositions_total",
                                    "Investigators' dispositions applied to the risk state", ["job"], registry=r)
        self.store_retries = Counter("argus_stream_store_retries_total", "Store writes retried after a failure",
                                     ["job"], registry=r)
        self.paused = Gauge("argus_stream_paused", "1 while consumption is paused (backpressure)", ["job"], registry=r)
        self.snapshots = Counter("argus_stream_state_snapshots_total", "Partition state snapshots saved", ["job"],
                                 registry=r)
        self.model_info = Gauge("argus_stream_model_info", "1 for the model version this consumer scores with",
                                ["job", "version"], registry=r)
        self.job = job

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
