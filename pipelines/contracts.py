"""Data contracts: what travels on Kafka (JSON with a schema version) and what lands in the store.

Every inbound record is parsed with `decode(model, raw_bytes)`, which either returns the model or
raises `ContractError` with a one-line reason fit for the dead-letter table.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class Channel(StrEnum):
    card_present = "card_present"
    online = "online"
    atm = "atm"
    contactless = "contactless"


class Transaction(Contract):
    transaction_id: Annotated[str, Field(min_length=1, max_length=128)]
    timestamp: datetime
    customer_id: Annotated[str, Field(min_length=1, max_length=128)]
    terminal_id: Annotated[str, Field(min_length=1, max_length=128)]
    amount: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    currency: Annotated[str, Field(min_length=3, max_length=3)] = "EUR"
    merchant_category: str | None = None
    channel: Channel | None = None
    country: Annotated[str, Field(min_length=2, max_length=2)] | None = None
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)


class Label(Contract):
    transaction_id: Annotated[str, Field(min_length=1, max_length=128)]
    is_fraud: bool
    reported_at: datetime
    customer_id: str | None = None
    terminal_id: str | None = None

    @field_validator("reported_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)


class Domain(StrEnum):
    finance = "finance"
    medical = "medical"


class Report(Contract):
    report_id: Annotated[str, Field(min_length=1, max_length=256)]
    domain: Domain
    title: str = ""
    text: Annotated[str, Field(min_length=1)]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v


class Decision(StrEnum):
    approve = "approve"
    review = "review"
    decline = "decline"


class Reason(BaseModel):
    """One thing that drove a score: a field of the current transaction or a context event."""

    model_config = ConfigDict(frozen=True)
    source: str  # "current" | "customer_history" | "terminal_history"
    feature: str
    weight: float
    detail: str = ""


class FraudScore(Contract):
    transaction_id: str
    score: Annotated[float, Field(ge=0.0, le=1.0)]
    decision: Decision
    reasons: list[Reason] = Field(default_factory=list)
    model_version: str
    scored_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class Span(BaseModel):
    """Character offsets [start, end) into the source document."""

    model_config = ConfigDict(frozen=True)
    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=0)]


class KeyFact(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: str  # figure | guidance | risk_factor | finding | impression | ...
    text: str
    spans: list[Span] = Field(default_factory=list)


class SummarySentence(BaseModel):
    model_config = ConfigDict(frozen=True)
    text: str
    spans: list[Span] = Field(default_factory=list)


class ReportSummary(Contract):
    report_id: str
    domain: Domain
    summary: str
    sentences: list[SummarySentence] = Field(default_factory=list)
    key_facts: list[KeyFact] = Field(default_factory=list)
    model_version: str
    mode: str = "extractive"
    faithfulness: dict[str, Any] = Field(default_factory=dict)
    latency_ms: float | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def spans(self) -> list[Span]:
        return [s for sent in self.sentences for s in sent.spans]


class ContractError(ValueError):
    """A record that does not meet its contract; `reason` is what goes to the dead-letter table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


M = TypeVar("M", bound=Contract)


def decode(model: type[M], raw: bytes | str | dict, max_bytes: int | None = None) -> M:
    """Parse one record into `model`, or raise ContractError with a short, field-level reason."""
    if isinstance(raw, (bytes, str)):
        if max_bytes is not None and len(raw) > max_bytes:
            raise ContractError(f"oversized: {len(raw)} bytes > {max_bytes}")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContractError(f"malformed json: {exc}") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise ContractError(f"malformed json: expected an object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ContractError(f"unsupported schema_version {version!r} (expected {SCHEMA_VERSION})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ContractError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """'amount: Input should be greater than or equal to 0; customer_id: Field required'."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
