"""The Serve application builder: `services.app:build_app`, called by Serve with the `args` of
`infra/serve.yaml` (or by `argus serve`, which deploys that same file).

The graph: Ingress (FastAPI) -> FraudScorer, Summarizer. With `score_in_ingress` (on by default for
CPU models) each Ingress replica also holds the fraud scoring core (services/fraud_scoring.py, the same
arguments as the FraudScorer) and scores single-transaction requests itself: no second Ray hop.
Arguments left out fall back to the Argus settings (environment / ARGUS_CONFIG YAML), so the Serve YAML
only names what an operator changes.
Per-deployment knobs (replicas, autoscaling, max_ongoing_requests, batch size/wait in user_config,
ray_actor_options) live in the YAML's `deployments:` section, where Serve applies them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from services.fraud_deployment import FraudScorerDeployment
from services.ingress import Ingress, IngressConfig
from services.summarizer_deployment import SummarizerDeployment


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fraud_checkpoint: str | None = None
    summarizer_checkpoint: str | None = None
    device: str | None = None  # auto | cpu | cuda (default: settings.model.device)
    # auto: one GPU per model replica when the Ray cluster has GPUs; 0: CPU replicas; N: N GPUs each
    gpus_per_replica: Literal["auto"] | float = "auto"
    # CPUs each model replica reserves (a fraction lets a small machine hold all three deployments)
    model_num_cpus: float = Field(0.5, ge=0.0)
    alert_threshold: float | None = Field(None, ge=0.0, le=1.0)
    review_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # the fraud stream job's state: a file of FraudState.snapshot() bytes, or store://<group>/<topic>
    # (the per-partition snapshots the stream keeps in the store at store_url)
    state_snapshot: str | None = None
    state_refresh_s: float = 30.0
    # without fraud_checkpoint: serve the registry's champion, polled this often (null: settings'
    # model.registry_poll_s; 0: never); a fraud_checkpoint pins the model
    registry_poll_s: float | None = Field(None, ge=0.0)
    summary_mode: str | None = None
    store_url: str | None = None
    # sha256(key) -> [scopes] or {"scopes": [...], "tenant": "..."}; merged over settings.serve.api_key_hashes
    api_key_hashes: dict[str, list[str] | dict[str, Any]] | None = None
    max_request_bytes: int | None = None
    rate_limit_per_minute: int | None = None
    rate_limit_burst: int | None = None
    key_rate_limits: dict[str, int] = Field(default_factory=dict)
    failure_rate_limit_per_minute: int | None = None  # failed requests per client address (default: settings)
    rate_limit_storage: str | None = None  # redis://host:6379/0 shares the limits across Ingress replicas
    cors_origins: list[str] | None = None
    model_timeout_s: float = 60.0
    # single-transaction requests scored inside each Ingress replica (the FraudScorer's core and
    # arguments, on CPU) instead of a handle call to the FraudScorer; batch requests still go there.
    # auto: on unless the model replicas use GPUs (device cuda, or gpus_per_replica > 0)
    score_in_ingress: Literal["auto"] | bool = "auto"
    # POST /v1/alerts/{id}/disposition also produces to settings.topics.dispositions at
    # settings.kafka.bootstrap_servers (in the background; the store is the truth)
    publish_dispositions: bool = True
    scorer_class: str = "models.fraud_scorer:FraudScorer"
    summarizer_class: str = "pipelines.report_summariser:Summarizer"


def _gpus(requested: Literal["auto"] | float) -> float:
    if requested != "auto":
        return float(requested)
    import ray

    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def build_app(args: dict | AppArgs | None = None) -> serve.Application:
    from pipelines.settings import get_settings

    a = AppArgs.model_validate(args or {})
    s = get_settings()
    device = a.device or s.model.device
    gpus = _gpus(a.gpus_per_replica)
    # serve.yaml's ray_actor_options for a deployment, when given, replace these
    actor = {"num_cpus": a.model_num_cpus, **({"num_gpus": gpus} if gpus > 0 else {})}
    fraud_d = FraudScorerDeployment.options(ray_actor_options=actor)
    summ_d = SummarizerDeployment.options(ray_actor_options=actor)
    if gpus > 0 and device == "auto":
        device = "cuda"

    scoring = dict(
        checkpoint=a.fraud_checkpoint or _opt_path(s.model.fraud_checkpoint),
        device=device,
        alert_threshold=a.alert_threshold if a.alert_threshold is not None else s.fraud.alert_threshold,
        review_threshold=a.review_threshold if a.review_threshold is not None else s.fraud.review_threshold,
        state_snapshot=a.state_snapshot, state_refresh_s=a.state_refresh_s, scorer_class=a.scorer_class,
        store_url=a.store_url or s.store.url.get_secret_value(),
        registry_poll_s=(0.0 if (a.fraud_checkpoint or s.model.fraud_checkpoint)
                         else a.registry_poll_s if a.registry_poll_s is not None else s.model.registry_poll_s),
    )
    fraud = fraud_d.bind(**scoring)
    in_ingress = a.score_in_ingress if a.score_in_ingress != "auto" else (gpus == 0 and device != "cuda")
    summarizer = summ_d.bind(
        checkpoint=a.summarizer_checkpoint or _opt_path(s.model.summariser_checkpoint), device=device,
        mode=a.summary_mode or s.summariser.mode, summarizer_class=a.summarizer_class,
    )
    config = IngressConfig(
        api_key_hashes={**s.serve.api_key_hashes, **(a.api_key_hashes or {})},
        max_request_bytes=a.max_request_bytes or s.serve.max_request_bytes,
        rate_limit_per_minute=a.rate_limit_per_minute or s.serve.rate_limit_per_minute,
        rate_limit_burst=a.rate_limit_burst, key_rate_limits=a.key_rate_limits,
        failure_rate_limit_per_minute=a.failure_rate_limit_per_minute or s.serve.failure_rate_limit_per_minute,
        rate_limit_storage=a.rate_limit_storage or s.serve.rate_limit_storage,
        cors_origins=a.cors_origins if a.cors_origins is not None else s.serve.cors_origins,
        store_url=a.store_url or s.store.url.get_secret_value(), model_timeout_s=a.model_timeout_s,
        dispositions_bootstrap=s.kafka.bootstrap_servers if a.publish_dispositions else None,
        dispositions_topic=s.topics.dispositions, metrics_ray=s.metrics.ray,
        in_ingress_scorer={**scoring, "device": "cpu"} if in_ingress else None,
    )
    return Ingress.bind(fraud, summarizer, config.model_dump())


def _opt_path(p) -> str | None:
    return str(p) if p is not None else None
