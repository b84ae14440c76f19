"""The HTTP ingress: a FastAPI app on a Serve deployment that holds handles to the FraudScorer and
Summarizer deployments and reads and writes results in the store.

Request path: metrics (outermost) -> CORS (only with configured origins) -> body size limit (413 by
Content-Length, before anything is read) -> route -> client address not blocked for failures (429)
-> API key + scope (401/403) -> per-key rate limit (429) -> only then the body is read and
validated (422, field-level, never echoing the input) -> model handle (503 while a model loads).

The contract is the OpenAPI document, and the code enforces exactly it: request bodies are parsed
by the REST models below in pydantic strict mode (a number is a JSON number, never a boolean or a
string; a timestamp is an RFC 3339 date-time with an offset), bodies with alternatives are `oneOf`,
and every status a route can answer is listed with its body schema. Every error body is
`{"code", "detail"}`: a stable code and a short message, never a path, a host, a driver's text or
the input; the cause goes to the replica log (by type, never with card data or document text).

Results are owned: a score or summary made through the API is stored with the tenant of the key
that made it, and `GET /v1/results/{id}` finds only the caller's own (an admin key, scope
`results:admin`, finds every result, the stream's too). Another tenant's id answers 404 exactly like
an unknown one. The review queue (scope `alerts:review`) follows the same rule: `GET /v1/alerts` lists
the open alerts of the caller's tenant's scores (admin: every alert) by score, paged by keyset, and
`POST /v1/alerts/{id}/disposition` stores the tenant's verdict, `GET /v1/alerts/{id}/history` shows
the customer's and terminal's latest scores beside an alert; another tenant's alert is a 404. Their
twins `POST /v1/alerts/disposition` (the id in the body) and `GET /v1/alerts/history?transaction_id=`
take every id, one that a URL path cannot carry (`/`, `.`, `..`) too; the page uses them. The
analysts' page at `/review` (services/review_page.py) is static files that call these routes.
Nothing here logs a request body: log lines carry route, status, latency and the key's short id.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import traceback
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator
from ray import serve
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.contracts import (
    MAX_NOTE_CHARS,
    Channel,
    ContractError,
    Disposition,
    DispositionKind,
    Domain,
    FraudScore,
    Reason,
    Report,
    ReportSummary,
    Transaction,
)
from pipelines.errors import StoreError
from services.fraud_scoring import FraudScoring
from services.loading import BadInput, ModelNotReady
from services.metrics import IngressMetrics
from services.review_page import add_review_page
from services.security import (
    API_KEY_HEADER,
    REVIEW_SCOPE,
    BodySizeLimit,
    KeyRing,
    Principal,
    SharedLimiter,
    retry_after_header,
)

log = logging.getLogger("ray.serve.argus")  # Serve writes ray.serve.* to the replica log files

# Bounds that keep any valid request well under a second of scoring on one CPU thread (a batch's
# transactions are read in order, one step per transaction of the same customer or terminal).
MAX_TRANSACTIONS_PER_REQUEST = 256
MAX_HISTORY = 256  # history of a single-transaction request
MAX_BATCH_ITEM_HISTORY = 32  # history of each transaction of a batch request
# What the contracts check in code (pipelines/contracts.py), said here in the schema as well, so the
# OpenAPI document states every rule the code applies:
# - ids and codes hold no control characters (C0, DEL, C1, U+2028/2029);
#   (as `not: {pattern: CONTROL}`: an unanchored search means the same in ECMA and Python regexes,
#   where `^...$` would not: Python's `$` also matches before a final newline);
CONTROL = "[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]"
_CONTROL = re.compile(CONTROL)
# - a timestamp is an RFC 3339 date-time (OpenAPI's `format: date-time`: an offset is required)
#   written with a year in [1970, 2199] (the range the stream accepts; arithmetic beyond overflows);
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
YEAR_PATTERN = "^(19[7-9][0-9]|2[01][0-9][0-9])-"
# - amounts are finite, >= 0 and at most AMOUNT_LIMIT;
AMOUNT_LIMIT = 1e12
# - a text the summariser can work on has at least one letter or digit (ASCII here, so the pattern
#   means the same to every JSON Schema validator).
TEXT_PATTERN = "[A-Za-z0-9]"


def _no_control(v: str) -> str:
    if _CONTROL.search(v):
        raise ValueError("control characters are not allowed")
    return v


def _str(min_length: int | None = None, max_length: int | None = None) -> Any:
    """A string without control characters, its length bounded."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length,
                                json_schema_extra={"not": {"pattern": CONTROL}}), AfterValidator(_no_control)]


# --- request schemas (strict: the REST contract; pipelines.contracts stays the Kafka contract) ------

class HistoryTransaction(Transaction):
    """A transaction as the REST API accepts it: the Kafka `Transaction` contract in strict mode
    (a number is a JSON number, never a boolean or a string), each of its rules in the schema."""

    model_config = ConfigDict(strict=True, regex_engine="python-re", title="Transaction")
    schema_version: Literal[1] = 1
    transaction_id: _str(1, 128)
    timestamp: Annotated[datetime, Field(json_schema_extra={"format": "date-time", "pattern": YEAR_PATTERN})]
    customer_id: _str(1, 128)
    terminal_id: _str(1, 128)
    amount: Annotated[float, Field(ge=0.0, le=AMOUNT_LIMIT, allow_inf_nan=False)]
    currency: _str(3, 3) = "EUR"
    merchant_category: _str(None, 64) | None = None
    channel: Channel | None = None
    country: _str(2, 2) | None = None
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)] | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _rfc3339(cls, v: Any) -> Any:
        if not isinstance(v, str) or not _RFC3339.fullmatch(v) or not re.match(YEAR_PATTERN, v):
            raise ValueError("timestamp must be an RFC 3339 date-time with an offset and a year in "
                             "[1970, 2199], e.g. 2024-05-01T12:30:00Z")
        try:
            return datetime.fromisoformat(v.upper().replace("Z", "+00:00")).astimezone(timezone.utc)
        except (ValueError, OverflowError):
            raise ValueError("timestamp is not a valid date-time") from None


class TransactionIn(HistoryTransaction):
    """One transaction to score, optionally with recent transactions of the same customer/terminal."""

    model_config = ConfigDict(title="TransactionIn")
    history: Annotated[list[HistoryTransaction], Field(max_length=MAX_HISTORY)] = Field(
        default_factory=list, description="recent transactions (any order) used as context for this one only")


class BatchTransactionIn(HistoryTransaction):
    """A transaction of a batch request, optionally with a (shorter) history of its own."""

    model_config = ConfigDict(title="BatchTransactionIn")
    history: Annotated[list[HistoryTransaction], Field(max_length=MAX_BATCH_ITEM_HISTORY)] = Field(
        default_factory=list, description="recent transactions used as context for this one only")


class ScoreBatchIn(BaseModel):
    """Several transactions of one caller, scored in order (each sees the earlier ones)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    transactions: Annotated[list[BatchTransactionIn], Field(min_length=1, max_length=MAX_TRANSACTIONS_PER_REQUEST)]


class ReportIn(Report):
    """A report as the REST API accepts it: the `Report` contract, strict, with text to summarise."""

    model_config = ConfigDict(strict=True, regex_engine="python-re", title="Report")
    schema_version: Literal[1] = 1
    report_id: _str(1, 256)
    domain: Domain
    title: str = ""
    text: Annotated[str, Field(min_length=1, pattern=TEXT_PATTERN)]
    metadata: dict[str, Any] = Field(default_factory=dict)


class SummarizeReportIn(BaseModel):
    """Summarise a full Report."""

    model_config = ConfigDict(extra="forbid", strict=True)
    report: ReportIn
    mode: Literal["extractive", "generative"] | None = None


class SummarizeTextIn(BaseModel):
    """Summarise plain text (+ optional domain, title, report_id)."""

    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")
    text: Annotated[str, Field(min_length=1, pattern=TEXT_PATTERN)]
    domain: Domain = Domain.finance
    title: str = ""
    report_id: _str(1, 256) | None = None
    mode: Literal["extractive", "generative"] | None = None

    def to_report(self) -> Report:
        return Report(report_id=self.report_id or f"rest-{uuid.uuid4().hex}", domain=self.domain, title=self.title,
                      text=self.text)


def _one_of(*tagged: tuple[type[BaseModel], str], key: str) -> TypeAdapter:
    """A oneOf of models told apart by whether the object has `key` (the last model has it)."""
    first, second = tagged
    return TypeAdapter(Annotated[Union[Annotated[first[0], Tag(first[1])], Annotated[second[0], Tag(second[1])]],
                                 Discriminator(lambda v: second[1] if isinstance(v, dict) and key in v else first[1])])


class DispositionIn(BaseModel):
    """An investigator's verdict on an alert (the reviewer is the API key's tenant)."""

    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")
    disposition: DispositionKind
    note: _str(None, MAX_NOTE_CHARS) | None = None


class AlertDispositionIn(DispositionIn):
    """The same verdict with the alert's id in the body: any transaction id (one with `/`, or `.`,
    `..`, `%2F`) can be disposed this way, where a URL path would be normalised or cut."""

    model_config = ConfigDict(title="AlertDispositionIn")
    transaction_id: _str(1, 128)


DISPOSITION_BODY = TypeAdapter(DispositionIn)
ALERT_DISPOSITION_BODY = TypeAdapter(AlertDispositionIn)
MAX_ALERTS_PER_PAGE = 200
MAX_ALERT_HISTORY = 50  # recent scores per side (customer, terminal) beside an alert

SCORE_BODY = _one_of((TransactionIn, "one"), (ScoreBatchIn, "batch"), key="transactions")
SUMMARIZE_BODY = _one_of((SummarizeTextIn, "text"), (SummarizeReportIn, "report"), key="report")


# --- response schemas -----------------------------------------------------------------------------

class ScoreOut(BaseModel):
    scores: list[FraudScore]


class ErrorOut(BaseModel):
    """Every error: a stable machine-readable code and a short message."""

    code: str
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """422: what is wrong, field by field (the input itself is never echoed)."""

    code: Literal["invalid_request", "model_input"]
    detail: list[FieldError]


class ModelHealth(BaseModel):
    state: Literal["ready", "loading", "failed", "unreachable"]
    model_version: str | None = None


class HealthModels(BaseModel):
    fraud: ModelHealth
    summarizer: ModelHealth


class HealthOut(BaseModel):
    status: Literal["ready", "not ready"]
    code: Literal["ready", "model_loading", "model_failed", "model_unreachable"]
    detail: str
    models: HealthModels


class AlertOut(BaseModel):
    """An open alert: the score that raised it, why, by which model, for which customer and terminal."""

    transaction_id: str
    score: float
    reasons: list[Reason]
    model_version: str
    created_at: datetime
    customer_id: str | None = None
    terminal_id: str | None = None
    timestamp: datetime | None = None
    amount: float | None = None


class AlertPage(BaseModel):
    """Open alerts, highest score first; `next_after` pages on (None: this was the last page)."""

    alerts: list[AlertOut]
    next_after: str | None = None


class HistoryEntry(BaseModel):
    """One earlier score of the alert's customer or terminal, with its disposition when it was a
    disposed alert."""

    transaction_id: str
    timestamp: datetime | None = None
    amount: float | None = None
    score: float
    decision: str
    model_version: str
    customer_id: str | None = None
    terminal_id: str | None = None
    disposition: DispositionKind | None = None
    note: str | None = None


class AlertHistory(BaseModel):
    """The recent history beside an alert: its customer's and its terminal's latest scores up to the
    alert's transaction time, newest first."""

    transaction_id: str
    customer: list[HistoryEntry]
    terminal: list[HistoryEntry]


class PingOut(BaseModel):
    ok: bool


TX_EXAMPLE = {"transaction_id": "tx-1001", "timestamp": "2024-05-01T12:30:00Z", "customer_id": "c-42",
              "terminal_id": "t-7", "amount": 129.5, "currency": "EUR", "channel": "online"}
SCORE_EXAMPLES = {
    "one": {"summary": "One transaction", "value": TX_EXAMPLE},
    "with_history": {"summary": "One transaction with the customer's recent history", "value": {
        **TX_EXAMPLE, "history": [{**TX_EXAMPLE, "transaction_id": "tx-0999", "timestamp": "2024-05-01T09:00:00Z",
                                   "amount": 12.0}]}},
    "batch": {"summary": "Several transactions", "value": {"transactions": [
        TX_EXAMPLE, {**TX_EXAMPLE, "transaction_id": "tx-1002", "amount": 4999.0}]}},
}
DISPOSITION_EXAMPLES = {
    "fraud": {"summary": "Confirmed fraud", "value": {"disposition": "fraud", "note": "customer confirms the card was stolen"}},
    "legitimate": {"summary": "Confirmed legitimate", "value": {"disposition": "legitimate"}},
}
ALERT_DISPOSITION_EXAMPLES = {name: {"summary": ex["summary"], "value": {"transaction_id": "tx-1001", **ex["value"]}}
                              for name, ex in DISPOSITION_EXAMPLES.items()}
SUMMARIZE_EXAMPLES = {
    "text": {"summary": "Plain text", "value": {
        "text": "Revenue rose 12% to $4.2 billion in the quarter. Operating margin was 18.5%. "
                "The company expects full-year revenue of $17 billion.", "domain": "finance"}},
    "report": {"summary": "A full Report", "value": {"report": {
        "report_id": "xr-77", "domain": "medical", "title": "Chest X-ray",
        "text": "Findings: The lungs are clear. No pleural effusion. Impression: No acute disease."}}},
}


class IngressConfig(BaseModel):
    """What the ingress needs at run time (built by services.app.build_app from serve.yaml)."""

    api_key_hashes: dict[str, Any] = Field(default_factory=dict)  # digest -> [scopes] | {scopes, tenant}
    max_request_bytes: int = 2_000_000
    rate_limit_per_minute: int = 6000
    rate_limit_burst: int | None = None
    key_rate_limits: dict[str, int] = Field(default_factory=dict)
    # failed requests (401/403/404/413/422) per client address and minute before it gets 429s
    failure_rate_limit_per_minute: int = 600
    # redis://host:6379/0: count limits in Redis (shared by every Ingress replica); None: per replica
    rate_limit_storage: str | None = None
    cors_origins: list[str] = Field(default_factory=list)
    store_url: str | None = None
    model_timeout_s: float = 60.0
    # where a REST disposition is also published (Kafka bootstrap; security from settings.kafka);
    # None: stored only
    dispositions_bootstrap: str | None = None
    dispositions_topic: str = "argus.dispositions"
    # also record the Ingress metrics through Ray's metrics API (settings.metrics.ray): every replica's,
    # exported by its node's Ray agent, where /metrics shows one replica's
    metrics_ray: bool = False
    # the FraudScorer's arguments (services.fraud_scoring.FraudScoring): with them, single-transaction
    # requests are scored in this replica by the same scoring core, not through a second Ray hop to the
    # FraudScorer deployment (which still scores batch requests); None: every request goes there
    in_ingress_scorer: dict[str, Any] | None = None


# --- the ingress state (plain; the Serve deployment below adds batching) --------------------------

class IngressCore:
    def __init__(self, fraud: Any, summarizer: Any, config: dict[str, Any] | IngressConfig):
        self.fraud = fraud
        self.summarizer = summarizer
        self.config = IngressConfig.model_validate(config)
        c = self.config
        self.keys = KeyRing(c.api_key_hashes)
        self.limiter = SharedLimiter(c.rate_limit_storage, c.rate_limit_per_minute,
                                     {k.lower(): v for k, v in c.key_rate_limits.items()}, "key", c.rate_limit_burst)
        self.failures = SharedLimiter(c.rate_limit_storage, c.failure_rate_limit_per_minute, {}, "addr")
        self.metrics = IngressMetrics()
        # single-transaction scoring in this replica (loads in the background; 503 until it has)
        self.local_fraud = (FraudScoring(**{"inline": True, **c.in_ingress_scorer})
                            if c.in_ingress_scorer is not None else None)
        if c.metrics_ray:
            from services.stream_ray_metrics import mirror_to_ray

            mirror_to_ray(self.metrics)
        self._store = None
        self._producer: Any = None
        self._publish_lock = threading.Lock()
        self._publish_paused_until = 0.0
        self._publisher: ThreadPoolExecutor | None = None  # one thread: dispositions go out in order
        if not len(self.keys):
            log.warning("no API keys configured: every keyed endpoint answers 401 (see `argus keys new`)")
        if c.store_url:
            try:  # a server that reads the store brings its schema up to date when it starts
                self.store()
            except StoreError:
                log.error("store not reachable at start; retried on the first request that needs it")

    async def score_batched(self, item: tuple[Transaction, tuple[Transaction, ...], str]) -> tuple[FraudScore, int]:
        """One single-transaction request (tx, history, tenant): scored, stored, returned."""
        return (await self.score_and_save([item]))[0]

    async def score_and_save(self, items: list[tuple[Transaction, tuple[Transaction, ...], str]]
                             ) -> list[tuple[FraudScore, int]]:
        """Requests of possibly different tenants: one independent model call (in this replica with
        `in_ingress_scorer`, else to the FraudScorer deployment), then one store transaction per
        tenant for their results."""
        scoring = self.local_fraud.score_many if self.local_fraud is not None else self.fraud.score_many.remote
        scores, batch_size = await scoring([(tx, h) for tx, h, _ in items], independent=True)
        by_tenant: dict[str, list[tuple[FraudScore, Transaction]]] = {}
        for score, (tx, _, tenant) in zip(scores, items):
            by_tenant.setdefault(tenant, []).append((score, tx))
        for tenant, rows in by_tenant.items():
            await self.save(tenant, scores=rows)
        return [(s, batch_size) for s in scores]

    def store(self) -> Any:
        """The store, its schema created/upgraded on first use (idempotent, safe across processes)."""
        if self._store is None:
            from pipelines.store import Store

            if not self.config.store_url:
                raise StoreError("no store configured for results")
            store = None
            try:
                store = Store.from_url(self.config.store_url, check=False)
                store.create_schema()
            except Exception as exc:  # noqa: BLE001 - bad URL, unreachable, no permission: all "unavailable"
                if store is not None:
                    store.close()
                log.error("store schema not created: %s", type(exc.__cause__ or exc).__name__)
                raise StoreError("store unavailable") from None
            self._store = store
        return self._store

    async def save(self, tenant: str, scores: list[tuple[FraudScore, Transaction]] = (),
                   summaries: list[ReportSummary] = ()) -> None:
        """Record what a tenant created. A failed write is logged, not raised: the caller has its
        answer; a later GET of that id is a 404."""
        if not self.config.store_url:
            return
        try:
            await asyncio.to_thread(lambda: self.store().write_owned(tenant, scores=scores, summaries=summaries))
        except Exception as exc:  # noqa: BLE001
            log.error("result not stored: %s", type(exc).__name__)


    def publish_later(self, record: Disposition) -> None:
        """Publish a stored disposition on the dispositions topic in the background (the answer does
        not wait for the broker: the store is the truth). A broker that cannot be reached is logged
        and tried again at most every PUBLISH_RETRY_S; what was stored meanwhile is not re-sent."""
        if not self.config.dispositions_bootstrap:
            return
        if self._publisher is None:
            self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argus-dispositions")
        self._publisher.submit(self._publish, record)

    def _publish(self, record: Disposition) -> bool:
        from pipelines.alert_review import publish_disposition
        from pipelines.kafka_io import make_producer, wait_for_broker, with_bootstrap
        from pipelines.settings import get_settings

        with self._publish_lock:  # one producer per replica, made on first use
            if time.monotonic() < self._publish_paused_until:
                log.warning("disposition stored, not published (broker unreachable lately)")
                return False
            base = with_bootstrap(get_settings(), self.config.dispositions_bootstrap)
            settings = base.model_copy(update={"topics": base.topics.model_copy(
                update={"dispositions": self.config.dispositions_topic})})
            try:
                if self._producer is None:  # a quick reachability check: a producer's own bootstrap waits ~30 s
                    wait_for_broker(settings.kafka.bootstrap_servers, 3.0, settings=settings)
                    self._producer = make_producer(settings, linger_ms=0, max_block_ms=5000, request_timeout_ms=5000)
                publish_disposition(settings, record, timeout_s=5.0, producer=self._producer)
                return True
            except Exception as exc:  # noqa: BLE001 - a broker problem never fails the request
                log.warning("disposition stored, not published (%s)", type(exc).__name__)
                self._publish_paused_until = time.monotonic() + PUBLISH_RETRY_S
                if self._producer is not None:
                    try:
                        self._producer.close(timeout=1)
                    except Exception:  # noqa: BLE001
                        pass
                    self._producer = None
                return False


#: After a failed publish, dispositions are stored only for this long before the broker is tried again.
PUBLISH_RETRY_S = 30.0


# --- the Serve deployment -------------------------------------------------------------------------

@serve.deployment(name="Ingress", max_ongoing_requests=1024)
@serve.ingress()
class Ingress(IngressCore):
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, max_concurrent_batches=2)
    async def score_batched(self, items: list[tuple[Transaction, tuple[Transaction, ...], str]]
                            ) -> list[tuple[FraudScore, int]]:
        """Concurrent single-transaction requests -> one call to the FraudScorer (a handle call costs
        far more than scoring one row, so it is paid once per batch, not once per request) and one
        store write per tenant. The requests are independent: none is scored with another's
        transactions."""
        return await self.score_and_save(items)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """user_config: score_batch_size / score_batch_wait_s (how single-transaction requests are
        gathered); alert_threshold, review_threshold, explain_top_k for the in-ingress scorer (the
        same settings as the FraudScorer's user_config; serve.yaml gives both one block)."""
        if "score_batch_size" in config:
            self.score_batched.set_max_batch_size(int(config["score_batch_size"]))
        if "score_batch_wait_s" in config:
            self.score_batched.set_batch_wait_timeout_s(float(config["score_batch_wait_s"]))
        if self.local_fraud is not None:
            self.local_fraud.configure(config)

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = create_api(self)
        # what the replica has built by now lives as long as it: out of every full collection, which
        # would otherwise walk it again and again under load (~1/3 of the CPU a request costs here)
        gc.freeze()
        return api


# --- the FastAPI app ------------------------------------------------------------------------------

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         413: "body_too_large", 415: "unsupported_media_type", 429: "rate_limited"}
# counted against the client address: what a scanner or a guesser produces
FAILURE_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 422})


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def _error(description: str, headers: dict[str, Any] | None = None, model: type[BaseModel] = ErrorOut) -> dict:
    out: dict[str, Any] = {"model": model, "description": description}
    if headers:
        out["headers"] = headers
    return out


_SECONDS = {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True,
            "description": "whole seconds to wait before retrying"}
AUTH_ERRORS = {
    401: _error("missing or unknown API key", {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}),
    403: _error("the key lacks the scope"),
    429: _error("rate limit exceeded for this key, or too many failed requests from this address",
                {"Retry-After": _SECONDS}),
}
BODY_ERRORS = {
    413: _error("body larger than max_request_bytes (checked before it is read)"),
    422: _error("the body does not match the schema (field by field); for summaries also "
                "`model_input` when the model rejects the text", model=ValidationErrorOut),
}
MODEL_ERRORS = {
    503: _error("a model is loading or failed to load (see /healthz)", {"Retry-After": _SECONDS}),
    504: _error("the model did not answer within model_timeout_s"),
}


def create_api(backend: IngressCore) -> FastAPI:
    api = FastAPI(
        title="Argus scoring API",
        version="1",
        description="Fraud scoring and report summarisation on a DeepSeek-style MoE model. "
                    f"Send an API key in the `{API_KEY_HEADER}` header; each key has scopes and a tenant. "
                    f"Request bodies are limited to {backend.config.max_request_bytes} bytes (413).",
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="API key (scoped)")

    async def authorize(request: Request, key: str | None, scope: str) -> Principal:
        # The key is checked before anything reads the body (no route here declares a body
        # parameter; each reads and validates its own after this returns).
        address = request.client.host if request.client else "-"
        wait = await backend.failures.blocked(address)
        if wait > 0:
            raise ApiError(429, "too_many_failures", "too many failed requests from this address",
                           {"Retry-After": retry_after_header(wait)})
        principal = backend.keys.authenticate(key)
        if principal is None:
            raise ApiError(401, "unauthorized", "missing or unknown API key", {"WWW-Authenticate": "ApiKey"})
        request.state.key_id = principal.key_id
        if scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"this API key lacks the scope {scope}")
        wait = await backend.limiter.acquire(principal.key_hash)
        if wait > 0:
            raise ApiError(429, "rate_limited", "rate limit exceeded for this API key",
                           {"Retry-After": retry_after_header(wait)})
        return principal

    def require(scope: str):
        async def check(request: Request, key: str | None = Security(key_header)) -> Principal:
            return await authorize(request, key, scope)

        return check

    # The scoring route, the hot one, checks its key without FastAPI's dependency solving (about a
    # third of the handler's own CPU); its OpenAPI security is stated as the dependency would state it.
    KEYED = {"security": [{key_header.scheme_name: []}]}

    async def read_body(request: Request, adapter: TypeAdapter) -> Any:
        raw = await request.body()
        try:
            return adapter.validate_json(raw, strict=True)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"][1:])} if e["loc"] else {**e, "loc": ("body",)} for e in exc.errors(
                    include_url=False, include_input=False, include_context=False)]) from None

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse({"code": CODES.get(exc.status_code, f"http_{exc.status_code}"), "detail": detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Field-level messages without `input`/`ctx`, so card or document data is never echoed.
        detail = [{"loc": [p if isinstance(p, (str, int)) else str(p) for p in err.get("loc", ())],
                   "msg": err.get("msg", ""), "type": err.get("type", "")} for err in exc.errors()]
        return JSONResponse({"code": "invalid_request", "detail": detail}, status_code=422)

    @api.exception_handler(ModelNotReady)
    async def _not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        cause = getattr(exc, "cause", None) or exc
        failed = getattr(cause, "state", "loading") == "failed"
        return JSONResponse({"code": "model_failed" if failed else "model_loading",
                             "detail": "a model failed to load; see /healthz" if failed else "a model is still loading"},
                            status_code=503, headers={"Retry-After": "5"})

    @api.exception_handler(TimeoutError)
    async def _timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return JSONResponse({"code": "model_timeout",
                             "detail": f"the model did not answer within {backend.config.model_timeout_s:g} s"},
                            status_code=504)

    @api.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput) -> JSONResponse:
        log.info("model rejected its input (%s)", type(getattr(exc, "cause", None) or exc).__name__)
        return JSONResponse({"code": "model_input", "detail": [
            {"loc": ["body"], "msg": "the model cannot process this input", "type": "model_input"}]}, status_code=422)

    @api.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store unavailable (%s)", type(exc.__cause__ or exc).__name__)
        return JSONResponse({"code": "store_unavailable", "detail": "the results store is unavailable"},
                            status_code=503, headers={"Retry-After": "5"})

    @api.post("/v1/fraud/score", response_model=ScoreOut, tags=["fraud"],
              responses={**AUTH_ERRORS, **BODY_ERRORS, **MODEL_ERRORS}, openapi_extra=KEYED)
    async def score(request: Request) -> Response:
        """Score one transaction (a Transaction object, optional `history`) or several
        (`{"transactions": [...]}`). Each request is scored with its own transactions and history
        only (plus, when configured, the stream job's state, read-only). The scores are stored as
        results of the caller's tenant (`GET /v1/results/{transaction_id}`)."""
        principal = await authorize(request, request.headers.get(API_KEY_HEADER) or None, "fraud:score")
        body = await read_body(request, SCORE_BODY)
        if isinstance(body, ScoreBatchIn):  # already a batch: one handle call for all of it
            items = [(_plain(item), tuple(item.history)) for item in body.transactions]
            call = backend.fraud.score_many.remote(items)
            scores, batch_size = await asyncio.wait_for(call, backend.config.model_timeout_s)
            results = [(s, batch_size) for s in scores]
            await backend.save(principal.tenant, scores=[(s, tx) for s, (tx, _) in zip(scores, items)])
        else:  # one transaction: gathered with concurrent requests into one handle call (and store write)
            item = (_plain(body), tuple(body.history), principal.tenant)
            async with asyncio.timeout(backend.config.model_timeout_s):  # no task of its own, as wait_for makes
                results = [await backend.score_batched(item)]
        for fraud_score, batch_size in results:
            backend.metrics.scores.observe(fraud_score.score)
            backend.metrics.decisions.labels(fraud_score.decision.value).inc()
            backend.metrics.batch_size.labels("fraud").observe(batch_size)
            backend.metrics.model_results.labels("fraud", fraud_score.model_version or "unknown").inc()
        # Serialised once here (pydantic-core), not re-validated against response_model by FastAPI.
        return Response(ScoreOut.model_construct(scores=[s for s, _ in results]).model_dump_json(),
                        media_type="application/json")

    @api.post("/v1/reports/summarize", response_model=ReportSummary, tags=["reports"],
              responses={**AUTH_ERRORS, **BODY_ERRORS, **MODEL_ERRORS})
    async def summarize(request: Request, principal: Principal = Depends(require("reports:summarize"))) -> ReportSummary:
        """Summarise a report (`{"report": Report}`) or plain text (`{"text", "domain"}`): summary
        sentences with source spans, key facts, faithfulness checks. Stored as a result of the
        caller's tenant (`GET /v1/results/{report_id}`)."""
        body = await read_body(request, SUMMARIZE_BODY)
        report = body.report if isinstance(body, SummarizeReportIn) else body.to_report()
        report = Report.model_construct(**{k: getattr(report, k) for k in Report.model_fields})
        summary, batch_size = await asyncio.wait_for(
            backend.summarizer.summarize.remote(report, body.mode), backend.config.model_timeout_s)
        backend.metrics.batch_size.labels("summarizer").observe(batch_size)
        backend.metrics.model_results.labels("summarizer", getattr(summary, "model_version", None) or "unknown").inc()
        await backend.save(principal.tenant, summaries=[summary])
        return summary

    @api.get("/v1/results/{result_id}", response_model=FraudScore | ReportSummary, tags=["results"],
             responses={**AUTH_ERRORS, 404: _error("no result with this id that this key may read"),
                        422: _error("the id is not 1-256 characters", model=ValidationErrorOut),
                        503: _error("the results store is unavailable", {"Retry-After": _SECONDS})})
    def get_result(result_id: Annotated[str, Path(min_length=1, max_length=256)],
                   principal: Principal = Depends(require("results:read"))) -> Any:
        """A stored fraud score (by transaction_id) or report summary (by report_id) that the
        caller's tenant created; with the scope `results:admin`, any (the stream's too). Another
        tenant's id is a 404, the same as an id that does not exist."""
        try:
            result = backend.store().get_result(result_id, tenant=None if principal.is_admin else principal.tenant)
        except SQLAlchemyError as exc:  # database down
            raise StoreError("store unavailable") from exc
        if result is None:
            raise ApiError(404, "not_found", "no result with this id")
        return result

    @api.get("/v1/alerts", response_model=AlertPage, tags=["alerts"],
             responses={**AUTH_ERRORS, 404: _error("`after` is not an alert this key may see"),
                        422: _error("a query parameter is out of range", model=ValidationErrorOut),
                        503: _error("the results store is unavailable", {"Retry-After": _SECONDS})})
    def list_alerts(limit: Annotated[int, Query(ge=1, le=MAX_ALERTS_PER_PAGE)] = 50,
                    after: Annotated[str | None, Query(min_length=1, max_length=128,
                                                       description="the last transaction_id of the previous page")] = None,
                    principal: Principal = Depends(require(REVIEW_SCOPE))) -> AlertPage:
        """The open review queue: alerts without a disposition, highest score first (ties by
        transaction_id), of the caller's tenant's scores; with `results:admin`, every alert (the
        stream's too). Paged by keyset: pass the page's `next_after` as `after`."""
        if after is not None and _CONTROL.search(after):  # an id no alert can have (nor PostgreSQL text hold)
            raise ApiError(404, "not_found", "no alert with this id")
        try:
            rows = backend.store().open_alerts(limit=limit, after=after,
                                               tenant=None if principal.is_admin else principal.tenant)
        except SQLAlchemyError as exc:  # database down
            raise StoreError("store unavailable") from exc
        if rows is None:
            raise ApiError(404, "not_found", "no alert with this id")
        alerts_out = [AlertOut(**{k: r[k] for k in AlertOut.model_fields}) for r in rows]
        return AlertPage(alerts=alerts_out, next_after=alerts_out[-1].transaction_id if len(rows) == limit else None)

    async def dispose_alert(transaction_id: str, body: DispositionIn, principal: Principal) -> Disposition:
        """Store the tenant's verdict on the alert (404 when the key may not see it), then publish it."""
        tenant = None if principal.is_admin else principal.tenant

        def work() -> Disposition | None:
            return backend.store().dispose(transaction_id, body.disposition.value, principal.tenant, note=body.note,
                                           tenant=tenant)

        try:
            record = await asyncio.to_thread(work)
        except ContractError:  # an id no alert can have (control characters): unknown
            record = None
        except SQLAlchemyError as exc:
            raise StoreError("store unavailable") from exc
        if record is None:
            raise ApiError(404, "not_found", "no alert with this id")
        backend.publish_later(record)
        return record

    disposition_responses = {**AUTH_ERRORS, **BODY_ERRORS, 404: _error("no alert with this id that this key may review"),
                             503: _error("the results store is unavailable", {"Retry-After": _SECONDS})}

    @api.post("/v1/alerts/disposition", response_model=Disposition, tags=["alerts"],
              responses=disposition_responses)
    async def dispose_by_body(request: Request, principal: Principal = Depends(require(REVIEW_SCOPE))) -> Disposition:
        """Dispose an alert named in the body (`transaction_id`, `disposition`: `fraud`, `legitimate`
        or `unsure`, an optional note): the same as `POST /v1/alerts/{transaction_id}/disposition`
        for every id, one a URL path cannot carry (`/`, `.`, `..`) included. Stored with the alert as
        the verdict of the caller's tenant, overwriting an earlier one, then published on the
        dispositions topic. Another tenant's alert is a 404, the same as an unknown id."""
        body = await read_body(request, ALERT_DISPOSITION_BODY)
        return await dispose_alert(body.transaction_id, body, principal)

    @api.post("/v1/alerts/{transaction_id}/disposition", response_model=Disposition, tags=["alerts"],
              responses=disposition_responses)
    async def dispose(transaction_id: Annotated[str, Path(min_length=1, max_length=128)], request: Request,
                      principal: Principal = Depends(require(REVIEW_SCOPE))) -> Disposition:
        """Dispose an alert (`fraud`, `legitimate` or `unsure`, an optional note): stored with the
        alert as the verdict of the caller's tenant, overwriting an earlier one, then published on
        the dispositions topic (keyed by the customer; in the background, when configured).
        Another tenant's alert is a 404, the same as an unknown id. An id with `/` (or `.`, `..`)
        cannot be a path segment: `POST /v1/alerts/disposition` takes the id in the body."""
        body = await read_body(request, DISPOSITION_BODY)
        return await dispose_alert(transaction_id, body, principal)

    history_responses = {**AUTH_ERRORS, 404: _error("no alert with this id that this key may review"),
                         422: _error("the id or `limit` is out of range", model=ValidationErrorOut),
                         503: _error("the results store is unavailable", {"Retry-After": _SECONDS})}

    @api.get("/v1/alerts/history", response_model=AlertHistory, tags=["alerts"], responses=history_responses)
    def alert_history_by_query(
            transaction_id: Annotated[str, Query(min_length=1, max_length=128, description="the alert's transaction id")],
            limit: Annotated[int, Query(ge=1, le=MAX_ALERT_HISTORY)] = 20,
            principal: Principal = Depends(require(REVIEW_SCOPE))) -> AlertHistory:
        """The history beside the alert named by the `transaction_id` query parameter: the same as
        `GET /v1/alerts/{transaction_id}/history` for every id, one a URL path cannot carry (`/`,
        `.`, `..`) included. Only the caller's tenant's scores (admin: all); another tenant's alert
        is a 404, the same as an unknown id."""
        return alert_history_of(transaction_id, limit, principal)

    @api.get("/v1/alerts/{transaction_id}/history", response_model=AlertHistory, tags=["alerts"],
             responses=history_responses)
    def alert_history(transaction_id: Annotated[str, Path(min_length=1, max_length=128)],
                      limit: Annotated[int, Query(ge=1, le=MAX_ALERT_HISTORY)] = 20,
                      principal: Principal = Depends(require(REVIEW_SCOPE))) -> AlertHistory:
        """What an investigator reads beside an alert: the latest scores (at most `limit` each, newest
        first) of its customer and of its terminal up to the alert's transaction time, each with its
        disposition and note when it was a disposed alert. Only the caller's tenant's scores (admin:
        all). Another tenant's alert is a 404, the same as an unknown id. An id with `/` (or `.`,
        `..`) cannot be a path segment: `GET /v1/alerts/history?transaction_id=` takes any id."""
        return alert_history_of(transaction_id, limit, principal)

    def alert_history_of(transaction_id: str, limit: int, principal: Principal) -> AlertHistory:
        if _CONTROL.search(transaction_id):  # an id no alert can have (nor PostgreSQL text hold)
            raise ApiError(404, "not_found", "no alert with this id")
        try:
            found = backend.store().alert_history(transaction_id, limit=limit,
                                                  tenant=None if principal.is_admin else principal.tenant)
        except SQLAlchemyError as exc:  # database down
            raise StoreError("store unavailable") from exc
        if found is None:
            raise ApiError(404, "not_found", "no alert with this id")
        return AlertHistory(transaction_id=transaction_id,
                            customer=[HistoryEntry(**r) for r in found["customer"]],
                            terminal=[HistoryEntry(**r) for r in found["terminal"]])

    @api.get("/healthz", tags=["ops"], response_model=HealthOut,
             responses={503: {"model": HealthOut, "description": "not ready: a model is loading, failed or unreachable"}})
    async def healthz(response: Response) -> HealthOut:
        """200 when both models are loaded, 503 (with each model's state) otherwise. No key needed.
        Why a model failed is in the replica log, not here."""
        models: dict[str, ModelHealth] = {}
        for name, handle in (("fraud", backend.fraud), ("summarizer", backend.summarizer)):
            try:
                status = await asyncio.wait_for(handle.ready.remote(), 5.0)
                models[name] = ModelHealth(state=status.get("state", "unreachable"),
                                           model_version=status.get("model_version"))
            except Exception as exc:  # noqa: BLE001 - a replica that is down or still starting
                log.info("healthz: %s unreachable (%s)", name, type(exc).__name__)
                models[name] = ModelHealth(state="unreachable")
        if backend.local_fraud is not None and models["fraud"].state == "ready":
            # single transactions are scored here: fraud is ready when this replica's scorer is too
            status = await backend.local_fraud.ready()
            models["fraud"] = ModelHealth(state=status["state"], model_version=status.get("model_version"))
        states = {m.state for m in models.values()}
        ready = states == {"ready"}
        code = ("ready" if ready else "model_failed" if "failed" in states
                else "model_unreachable" if "unreachable" in states else "model_loading")
        response.status_code = 200 if ready else 503
        return HealthOut(status="ready" if ready else "not ready", code=code,
                         detail="both models are loaded" if ready else code.replace("_", " "),
                         models=HealthModels(**models))

    @api.get("/v1/ping", tags=["ops"], response_model=PingOut)
    async def ping() -> dict[str, bool]:
        """A trivial answer from the ingress (no key, no model): measures the proxy path alone."""
        return {"ok": True}

    @api.get("/metrics", tags=["ops"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Prometheus text: requests by route/status, latency, scores, batch sizes (this replica)."""
        payload, content_type = backend.metrics.render()
        return Response(payload, media_type=content_type)

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus what it cannot derive: the request bodies (read by the routes
        themselves, after the key check) as oneOf schemas, and links from created results to GET."""
        if api.openapi_schema:
            return api.openapi_schema
        doc = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for path, adapter, examples, link in (
                ("/v1/fraud/score", SCORE_BODY, SCORE_EXAMPLES, "$response.body#/scores/0/transaction_id"),
                ("/v1/reports/summarize", SUMMARIZE_BODY, SUMMARIZE_EXAMPLES, "$response.body#/report_id")):
            schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            op = doc["paths"][path]["post"]
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema,
                                                                                  "examples": examples}}}
            op["responses"]["200"]["links"] = {"GetResult": {
                "operationId": doc["paths"]["/v1/results/{result_id}"]["get"]["operationId"],
                "parameters": {"result_id": link},
                "description": "the stored result (by the same tenant's key)"}}
        schema = DISPOSITION_BODY.json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components["DispositionIn"] = schema
        dispose_op = doc["paths"]["/v1/alerts/{transaction_id}/disposition"]["post"]
        dispose_op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/DispositionIn"}, "examples": DISPOSITION_EXAMPLES}}}
        components["AlertDispositionIn"] = ALERT_DISPOSITION_BODY.json_schema(ref_template="#/components/schemas/{model}")
        doc["paths"]["/v1/alerts/disposition"]["post"]["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/AlertDispositionIn"},
                                 "examples": ALERT_DISPOSITION_EXAMPLES}}}
        doc["paths"]["/v1/alerts"]["get"]["responses"]["200"]["links"] = {"DisposeAlert": {
            "operationId": dispose_op["operationId"], "parameters": {"transaction_id": "$response.body#/alerts/0/transaction_id"},
            "description": "dispose the highest-scored open alert of the page"}}
        api.openapi_schema = doc
        return doc

    api.openapi = openapi
    add_review_page(api)  # the analysts' page (static files, outside the OpenAPI document)
    api.add_middleware(BodySizeLimit, max_bytes=backend.config.max_request_bytes)
    if backend.config.cors_origins:
        api.add_middleware(CORSMiddleware, allow_origins=backend.config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=[API_KEY_HEADER, "Content-Type"])
    api.add_middleware(_Observe, metrics=backend.metrics, failures=backend.failures)
    return api


def _plain(item: TransactionIn) -> Transaction:
    """The Transaction part of a request item (its history travels separately)."""
    return Transaction.model_construct(**{k: getattr(item, k) for k in Transaction.model_fields})


class _Observe:
    """Outermost ASGI middleware: request count/latency by route template and status; one log line
    for each non-2xx answer (route, status, key id; never the body); failed /v1 requests counted
    against the client address (its budget is checked before the key, see `require`)."""

    def __init__(self, app, metrics: IngressMetrics, failures: SharedLimiter):
        self.app = app
        self.metrics = metrics
        self.failures = failures

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        started = False

        async def send_status(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            # Logged by type and place only (an exception's message can quote its input: a card
            # number, a document), and not re-raised, so nothing further up logs it in full.
            cause = getattr(exc, "cause", None) or exc
            frames = traceback.extract_tb(cause.__traceback__)[-1:]
            where = f"{frames[0].filename}:{frames[0].lineno}" if frames else "?"
            log.error("unhandled %s at %s", type(cause).__name__, where)
            status = 500
            if not started:
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": b'{"code":"internal_error","detail":"internal error"}'})
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start)
            if status >= 400:
                state = scope.get("state")
                key_id = state.get("key_id") if isinstance(state, dict) else None
                log.info("%s %s -> %d key=%s", scope["method"], route, status, key_id or "-")
                if status in FAILURE_STATUSES and scope.get("path", "").startswith("/v1/"):
                    client = scope.get("client")
                    await self.failures.acquire(client[0] if client else "-")
