"""Data contracts: what travels on Kafka (JSON with a schema version) and what lands in the store.

Every inbound record is parsed with `decode(model, raw_bytes)`, which either returns the model or
raises `ContractError` with a one-line reason fit for the dead-letter table. `decode` never raises
anything else, whatever the bytes: JSON is parsed by pydantic-core (strict types, a nesting limit,
no RecursionError), and the contracts reject at the door what later steps could not handle -
timestamps outside `TIME_RANGE`, control characters in ids, ids over their length limit,
non-finite or absurd numbers, wrong types at any depth.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
#: Event times a stream accepts (UTC). Outside it a timestamp is a producer bug, and arithmetic on
#: it (time zones, day buckets, the store) would overflow.
TIME_RANGE = (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2200, 1, 1, tzinfo=timezone.utc))
#: Amounts above this are not money (and lose cent precision as floats).
AMOUNT_LIMIT = 1e12
_CONTROL = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))) | {"\u2028", "\u2029"}


def _no_control(v: str) -> str:
    if not _CONTROL.isdisjoint(v):
        raise ValueError("control characters are not allowed")
    return v


def _sane_time(v: datetime) -> datetime:
    if v.tzinfo is None:
        v = v.replace(tzinfo=timezone.utc)
    try:
        utc = v.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError("timestamp out of range") from None
    if not TIME_RANGE[0] <= utc < TIME_RANGE[1]:
        raise ValueError(f"timestamp out of range [{TIME_RANGE[0].year}, {TIME_RANGE[1].year})")
    return utc


Id = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_control)]
EventTime = Annotated[datetime, AfterValidator(_sane_time)]


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v!r}")
        return v

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class Channel(StrEnum):
    card_present = "card_present"
    online = "online"
    atm = "atm"
    contactless = "contactless"


class Transaction(Contract):
    transaction_id: Id
    timestamp: EventTime
    customer_id: Id
    terminal_id: Id
    amount: Annotated[float, Field(ge=0.0, le=AMOUNT_LIMIT, allow_inf_nan=False)]
    currency: Annotated[str, Field(min_length=3, max_length=3), AfterValidator(_no_control)] = "EUR"
    merchant_category: Annotated[str, Field(max_length=64), AfterValidator(_no_control)] | None = None
    channel: Channel | None = None
    country: Annotated[str, Field(min_length=2, max_length=2), AfterValidator(_no_control)] | None = None
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)] | None = None


#: How far ahead of the wall clock a label's report time may be (clock skew): a chargeback is reported
#: about the past, and a label waits for its transaction from its report time on.
LABEL_FUTURE_TOLERANCE = timedelta(days=1)


class Label(Contract):
    transaction_id: Id
    is_fraud: bool
    reported_at: EventTime
    customer_id: Id | None = None
    terminal_id: Id | None = None

    @field_validator("reported_at")
    @classmethod
    def _not_future(cls, v: datetime) -> datetime:
        if v > datetime.now(timezone.utc) + LABEL_FUTURE_TOLERANCE:
            raise ValueError("reported_at is in the future")
        return v


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
    content_hash: str | None = None  # sha256 of the summarised text (a batch resumes on id + content)

    @property
    def spans(self) -> list[Span]:
        return [s for sent in self.sentences for s in sent.spans]


class DispositionKind(StrEnum):
    fraud = "fraud"
    legitimate = "legitimate"
    unsure = "unsure"


#: The longest note an investigator may leave on a disposition (characters).
MAX_NOTE_CHARS = 1000


class Disposition(Contract):
    """An investigator's verdict on an alert, as stored with it (`alert_dispositions`) and published
    on the dispositions topic, keyed by `customer_id` (the same partition as that customer's
    transactions). Disposing again overwrites: the latest disposition of a transaction stands."""

    transaction_id: Id
    disposition: DispositionKind
    disposed_by: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_control)]
    disposed_at: EventTime
    note: Annotated[str, Field(max_length=MAX_NOTE_CHARS), AfterValidator(_no_control)] | None = None
    customer_id: Id | None = None  # of the alerted transaction (None when the store has no score row for it)
    terminal_id: Id | None = None

    @property
    def kafka_key(self) -> str:
        return self.customer_id or self.transaction_id


class ContractError(ValueError):
    """A record that does not meet its contract; `reason` is what goes to the dead-letter table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


M = TypeVar("M", bound=Contract)


#: The longest reason a dead letter carries (a record with thousands of bad fields gets the first ones).
MAX_REASON_CHARS = 1000


def decode(model: type[M], raw: bytes | str | dict | None, max_bytes: int | None = None) -> M:
    """Parse one record into `model`, or raise ContractError with a short, field-level reason.

    Bytes and text are parsed by pydantic-core in strict mode (no bool/str -> number coercion; its
    JSON parser has a depth limit, so deep nesting is a reason, not a RecursionError). Nothing else
    escapes: any other failure is a ContractError too."""
    if raw is None:
        raise ContractError("malformed json: empty record (no value)")
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        if max_bytes is not None and len(raw) > max_bytes:
            raise ContractError(f"oversized: {len(raw)} bytes > {max_bytes}")
        try:
            return model.model_validate_json(bytes(raw) if not isinstance(raw, str) else raw, strict=True)
        except ValidationError as exc:
            raise ContractError(describe(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the contract is the one place a record can fail
            raise ContractError(f"malformed json: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise ContractError(f"malformed json: expected an object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ContractError(describe(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise ContractError(f"invalid record: {type(exc).__name__}") from None


def describe(exc: ValidationError) -> str:
    """'amount: Input should be greater than or equal to 0; customer_id: Field required'."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        if err["type"] == "json_invalid":
            detail = err["ctx"].get("error", "invalid JSON") if err.get("ctx") else "invalid JSON"
            return f"malformed json: {json.dumps(str(detail))[1:-1]}"[:MAX_REASON_CHARS]
        if err["type"] == "model_type" and not loc:
            return "malformed json: expected an object"
        if loc == ("schema_version",):
            return f"unsupported schema_version (expected {SCHEMA_VERSION})"
        # a field name comes from the record: escape it, so a reason stays one printable line
        where = json.dumps(".".join(str(p) for p in loc)[:80])[1:-1] or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)[:MAX_REASON_CHARS]
