"""The HTTP ingress: a FastAPI app on a Serve deployment that holds handles to the FraudScorer and
Summarizer deployments and reads stored results from the store.

Request path: metrics (outermost) -> CORS (only with configured origins) -> body size limit (413
before the body is parsed) -> route -> API key + scope (401/403) -> per-key rate limit (429) ->
schema (422, field-level, never echoing the input) -> model handle (503 while a model loads).

Nothing here logs a request body: log lines carry route, status, latency and the key's short id.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from sqlalchemy.exc import SQLAlchemyError

from pipelines.errors import StoreError
from pipelines.contracts import Domain, FraudScore, Report, ReportSummary, Transaction
from services.loading import BadInput, ModelNotReady
from services.metrics import IngressMetrics
from services.security import API_KEY_HEADER, BodySizeLimit, KeyRing, Principal, RateLimiter, retry_after_header

log = logging.getLogger("ray.serve.argus")  # Serve writes ray.serve.* to the replica log files

MAX_TRANSACTIONS_PER_REQUEST = 1000
MAX_HISTORY = 256


# --- request / response schemas -------------------------------------------------------------------

class TransactionIn(Transaction):
    """A transaction to score, optionally with recent transactions of the same customer/terminal."""

    history: Annotated[list[Transaction], Field(max_length=MAX_HISTORY)] = Field(
        default_factory=list, description="recent transactions (any order) used as context for this one only")


class ScoreBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transactions: Annotated[list[TransactionIn], Field(min_length=1, max_length=MAX_TRANSACTIONS_PER_REQUEST)]


class ScoreOut(BaseModel):
    scores: list[FraudScore]


class SummarizeIn(BaseModel):
    """Either `report` (a full Report) or `text` (+ optional domain/title/report_id)."""

    model_config = ConfigDict(extra="forbid")
    report: Report | None = None
    text: Annotated[str, Field(min_length=1)] | None = None
    domain: Domain = Domain.finance
    title: str = ""
    report_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    mode: Literal["extractive", "generative"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SummarizeIn":
        if (self.report is None) == (self.text is None):
            raise ValueError("give exactly one of `report` or `text`")
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty")
        return self

    def to_report(self) -> Report:
        if self.report is not None:
            return self.report
        return Report(report_id=self.report_id or f"rest-{uuid.uuid4().hex}", domain=self.domain, title=self.title,
                      text=self.text)


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

    api_key_hashes: dict[str, list[str]] = Field(default_factory=dict)
    max_request_bytes: int = 2_000_000
    rate_limit_per_minute: int = 6000
    rate_limit_burst: int | None = None
    key_rate_limits: dict[str, int] = Field(default_factory=dict)
    cors_origins: list[str] = Field(default_factory=list)
    store_url: str | None = None
    model_timeout_s: float = 60.0


# --- the Serve deployment -------------------------------------------------------------------------

@serve.deployment(name="Ingress", max_ongoing_requests=1024)
@serve.ingress()
class Ingress:
    def __init__(self, fraud: Any, summarizer: Any, config: dict[str, Any] | IngressConfig):
        self.fraud = fraud
        self.summarizer = summarizer
        self.config = IngressConfig.model_validate(config)
        self.keys = KeyRing(self.config.api_key_hashes)
        self.limiter = RateLimiter(self.config.rate_limit_per_minute, self.config.rate_limit_burst,
                                   {k.lower(): v for k, v in self.config.key_rate_limits.items()})
        self.metrics = IngressMetrics()
        self._store = None
        if not len(self.keys):
            log.warning("no API keys configured: every keyed endpoint answers 401 (see `argus keys new`)")

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, max_concurrent_batches=2)
    async def score_batched(self, items: list[tuple[Transaction, tuple[Transaction, ...]]]) -> list[tuple[FraudScore, int]]:
        """Concurrent single-transaction requests -> one call to the FraudScorer (a handle call costs
        far more than scoring one row, so it is paid once per batch, not once per request)."""
        scores, batch_size = await self.fraud.score_many.remote(items)
        return [(s, batch_size) for s in scores]

    def reconfigure(self, config: dict[str, Any]) -> None:
        """user_config: score_batch_size / score_batch_wait_s (how single-transaction requests are gathered)."""
        if "score_batch_size" in config:
            self.score_batched.set_max_batch_size(int(config["score_batch_size"]))
        if "score_batch_wait_s" in config:
            self.score_batched.set_batch_wait_timeout_s(float(config["score_batch_wait_s"]))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    def store(self) -> Any:
        if self._store is None:
            from pipelines.store import Store

            if not self.config.store_url:
                raise HTTPException(503, "no store configured for results")
            self._store = Store.from_url(self.config.store_url, check=False)
        return self._store


# --- the FastAPI app ------------------------------------------------------------------------------

def create_api(backend: Ingress) -> FastAPI:
    api = FastAPI(
        title="Argus scoring API",
        version="1",
        description="Fraud scoring and report summarisation on a DeepSeek-style MoE model. "
                    f"Send an API key in the `{API_KEY_HEADER}` header; each key has scopes.",
    )
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="API key (scoped)")

    def require(scope: str):
        async def check(request: Request, key: str | None = Security(key_header)) -> Principal:
            principal = backend.keys.authenticate(key)
            if principal is None:
                raise HTTPException(401, "missing or unknown API key", headers={"WWW-Authenticate": "ApiKey"})
            request.state.key_id = principal.key_id
            if scope not in principal.scopes:
                raise HTTPException(403, f"this API key lacks the scope {scope!r}")
            wait = backend.limiter.acquire(principal.key_hash)
            if wait > 0:
                raise HTTPException(429, "rate limit exceeded for this API key",
                                    headers={"Retry-After": retry_after_header(wait)})
            return principal

        return check

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Field-level messages without `input`/`ctx`, so card or document data is never echoed.
        detail = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
                  for err in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @api.exception_handler(ModelNotReady)
    async def _not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse({"detail": _message(exc)}, status_code=503, headers={"Retry-After": "5"})

    @api.exception_handler(TimeoutError)
    async def _timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return JSONResponse({"detail": f"the model did not answer within {backend.config.model_timeout_s:g} s"},
                            status_code=504)

    @api.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body"], "msg": _message(exc), "type": "model_input"}]}, status_code=422)

    @api.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": f"store unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"})

    unavailable = {503: {"description": "a model is loading or failed to load"},
                   504: {"description": "the model did not answer within model_timeout_s"}}
    auth_errors = {401: {"description": "missing or unknown API key"}, 403: {"description": "key lacks the scope"},
                   429: {"description": "rate limit exceeded (see Retry-After)"}}

    @api.post("/v1/fraud/score", response_model=ScoreOut, tags=["fraud"],
              responses={**auth_errors, **unavailable, 413: {"description": "body too large"}})
    async def score(
        body: Annotated[TransactionIn | ScoreBatchIn, Body(openapi_examples=SCORE_EXAMPLES)],
        principal: Principal = Depends(require("fraud:score")),
    ) -> Response:
        """Score one transaction (a Transaction object) or several (`{"transactions": [...]}`)."""
        if isinstance(body, ScoreBatchIn):  # already a batch: one handle call for all of it
            items = [(_plain(item), tuple(item.history)) for item in body.transactions]
            call = backend.fraud.score_many.remote(items)
            scores, batch_size = await asyncio.wait_for(call, backend.config.model_timeout_s)
            results = [(s, batch_size) for s in scores]
        else:  # one transaction: gathered with concurrent requests into one handle call
            results = [await asyncio.wait_for(backend.score_batched((_plain(body), tuple(body.history))),
                                              backend.config.model_timeout_s)]
        for fraud_score, batch_size in results:
            backend.metrics.scores.observe(fraud_score.score)
            backend.metrics.decisions.labels(fraud_score.decision.value).inc()
            backend.metrics.batch_size.labels("fraud").observe(batch_size)
        # Serialised once here (pydantic-core), not re-validated against response_model by FastAPI.
        return Response(ScoreOut.model_construct(scores=[s for s, _ in results]).model_dump_json(),
                        media_type="application/json")

    @api.post("/v1/reports/summarize", response_model=ReportSummary, tags=["reports"],
              responses={**auth_errors, **unavailable, 413: {"description": "body too large"}})
    async def summarize(
        body: Annotated[SummarizeIn, Body(openapi_examples=SUMMARIZE_EXAMPLES)],
        principal: Principal = Depends(require("reports:summarize")),
    ) -> ReportSummary:
        """Summarise a report: summary sentences with source spans, key facts, faithfulness checks."""
        summary, batch_size = await asyncio.wait_for(
            backend.summarizer.summarize.remote(body.to_report(), body.mode), backend.config.model_timeout_s)
        backend.metrics.batch_size.labels("summarizer").observe(batch_size)
        return summary

    @api.get("/v1/results/{result_id}", response_model=FraudScore | ReportSummary, tags=["results"],
             responses={**auth_errors, 404: {"description": "no stored result with this id"}})
    def get_result(result_id: str, principal: Principal = Depends(require("results:read"))) -> Any:
        """A stored fraud score (by transaction_id) or report summary (by report_id)."""
        try:
            result = backend.store().get_result(result_id)
        except SQLAlchemyError as exc:  # database down, or its schema not created yet
            raise StoreError(f"{type(exc).__name__}: {str(getattr(exc, 'orig', None) or exc).splitlines()[0][:200]}") from None
        if result is None:
            raise HTTPException(404, f"no fraud score or summary with id {result_id!r}")
        return result

    @api.get("/healthz", tags=["ops"], responses={503: {"description": "not ready"}})
    async def healthz(response: Response) -> dict[str, Any]:
        """200 when both models are loaded, 503 (with each model's state) otherwise. No key needed."""
        models: dict[str, Any] = {}
        for name, handle in (("fraud", backend.fraud), ("summarizer", backend.summarizer)):
            try:
                models[name] = await asyncio.wait_for(handle.ready.remote(), 5.0)
            except Exception as exc:  # a replica that is down or still starting
                models[name] = {"state": "unreachable", "error": type(exc).__name__}
        ready = all(m.get("state") == "ready" for m in models.values())
        response.status_code = 200 if ready else 503
        return {"status": "ready" if ready else "not ready", "models": models}

    @api.get("/v1/ping", tags=["ops"])
    async def ping() -> dict[str, bool]:
        """A trivial answer from the ingress (no key, no model): measures the proxy path alone."""
        return {"ok": True}

    @api.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text: requests by route/status, latency, scores, batch sizes (this replica)."""
        payload, content_type = backend.metrics.render()
        return Response(payload, media_type=content_type)

    api.add_middleware(BodySizeLimit, max_bytes=backend.config.max_request_bytes)
    if backend.config.cors_origins:
        api.add_middleware(CORSMiddleware, allow_origins=backend.config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=[API_KEY_HEADER, "Content-Type"])
    api.add_middleware(_Observe, metrics=backend.metrics)
    return api


def _plain(item: TransactionIn) -> Transaction:
    """The Transaction part of a request item (its history travels separately)."""
    return Transaction.model_construct(**{k: getattr(item, k) for k in Transaction.model_fields})


def _message(exc: Exception) -> str:
    """The model replica's own message: an exception re-raised through a handle is a RayTaskError
    whose str() is a whole remote traceback, not something to send to a client."""
    cause = getattr(exc, "cause", None) or exc
    return str(cause.args[0]) if cause.args else type(cause).__name__


class _Observe:
    """Outermost ASGI middleware: request count/latency by route template and status; one log line
    for each non-2xx answer (route, status, key id; never the body)."""

    def __init__(self, app, metrics: IngressMetrics):
        self.app = app
        self.metrics = metrics

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
                body = f'{{"detail":"internal error ({type(cause).__name__})"}}'.encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start)
            if status >= 400:
                state = scope.get("state")
                key_id = state.get("key_id") if isinstance(state, dict) else None
                log.info("%s %s -> %d key=%s", scope["method"], route, status, key_id or "-")
