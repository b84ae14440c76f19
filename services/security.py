"""API keys, scopes, per-key rate limits and the request size limit for the REST ingress.

Keys are configured as sha256 hex digests mapped to scopes (`serve.api_key_hashes`), so the config
never holds a usable key. A request names its key in the `X-API-Key` header; the ingress hashes it
and looks the digest up (constant-time compare per candidate is unnecessary: the lookup is by
digest, and a digest reveals nothing about the key).

A key's entry is either a list of scopes or `{"scopes": [...], "tenant": "acme"}`: the tenant owns
what the key creates (scores, summaries) and `results:read` returns only that tenant's results
unless the key also has `results:admin` (which sees every result, including the stream's, which
have no tenant). Without a `tenant`, a key is its own tenant (its short digest). `alerts:review`
lists and disposes the alerts of the tenant's scores (with `results:admin`: every alert, the stream's too).

Rate limits: per key (`rate_limit_per_minute`, `key_rate_limits`) and, for requests that fail
(401/403/404/413/422), per client address (`failure_rate_limit_per_minute`). With
`rate_limit_storage: redis://host:6379/0` both are counted in Redis through the `limits` library
(sliding window), so they hold across Ingress replicas; without it (or while Redis is unreachable)
each replica keeps its own token buckets, and N replicas allow up to N x the rate.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pipelines.errors import ArgusError

log = logging.getLogger("ray.serve.argus")

API_KEY_HEADER = "X-API-Key"
ADMIN_SCOPE = "results:admin"  # results:read over every tenant's results (and the stream's)
REVIEW_SCOPE = "alerts:review"  # the fraud review queue: list open alerts, dispose them
SCOPES = ("fraud:score", "reports:summarize", "results:read", ADMIN_SCOPE, REVIEW_SCOPE)


class KeyConfigError(ArgusError):
    """A malformed key entry in `serve.api_key_hashes` (not a sha256 digest, unknown scope)."""


def hash_key(key: str) -> str:
    """The sha256 hex digest of an API key: what goes into `serve.api_key_hashes`."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits, URL-safe), prefixed so it is recognisable in a secret store."""
    return "argus_" + secrets.token_urlsafe(32)


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise KeyConfigError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    return list(dict.fromkeys(scopes))


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's digest (short form is safe to log) and what it may do."""

    key_hash: str
    scopes: frozenset[str]
    tenant: str = ""

    @property
    def key_id(self) -> str:
        return self.key_hash[:12]

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes


class KeyRing:
    """sha256(key) -> scopes, validated once at start so a typo fails the deploy, not a request."""

    def __init__(self, api_key_hashes: dict[str, Any]):
        self._by_hash: dict[str, tuple[frozenset[str], str]] = {}
        for digest, entry in api_key_hashes.items():
            digest = digest.strip().lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise KeyConfigError(
                    f"serve.api_key_hashes has an entry that is not a sha256 hex digest ({digest[:8]}...); "
                    "use `argus keys hash <key>`"
                )
            if isinstance(entry, dict):
                unknown = set(entry) - {"scopes", "tenant"}
                if unknown:
                    raise KeyConfigError(f"key {digest[:8]}...: unknown field(s) {', '.join(sorted(unknown))}")
                scopes, tenant = list(entry.get("scopes", [])), str(entry.get("tenant") or digest[:12])
            else:
                scopes, tenant = list(entry), digest[:12]
            if not 0 < len(tenant) <= 64:
                raise KeyConfigError(f"key {digest[:8]}...: tenant must be 1-64 characters")
            self._by_hash[digest] = (frozenset(check_scopes(scopes)), tenant)

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, key: str | None) -> Principal | None:
        if not key:
            return None
        digest = hash_key(key)
        entry = self._by_hash.get(digest)
        return None if entry is None else Principal(digest, entry[0], entry[1])


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """A token bucket per key: `rate_per_minute` refill, `burst` capacity (default: one minute's worth).

    `overrides` maps a key digest to its own rate per minute (e.g. a partner with a lower quota).
    """

    rate_per_minute: int
    burst: int | None = None
    overrides: dict[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def _limits(self, key_hash: str) -> tuple[float, float]:
        rate = self.overrides.get(key_hash, self.rate_per_minute)
        capacity = min(self.burst, rate) if self.burst else rate
        return rate / 60.0, float(max(capacity, 1))

    def acquire(self, key_hash: str) -> float:
        """Take one token. Returns 0.0 when allowed, else the seconds until a token is available."""
        per_second, capacity = self._limits(key_hash)
        if per_second <= 0:
            return 60.0
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key_hash)
            if bucket is None:
                bucket = self._buckets[key_hash] = _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * per_second)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / per_second

    def blocked(self, key: str) -> float:
        """Seconds until `key` has a token again (0.0: it has one now); takes nothing."""
        per_second, capacity = self._limits(key)
        if per_second <= 0:
            return 60.0
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            tokens = min(capacity, bucket.tokens + (self.clock() - bucket.updated) * per_second)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / per_second


class SharedLimiter:
    """The same interface (async), counted in Redis with `limits` (sliding window per minute), so
    every Ingress replica draws on one budget per key. If Redis cannot be reached the replica falls
    back to its own token buckets (logged, at most once a minute) rather than failing requests."""

    def __init__(self, storage_url: str | None, rate_per_minute: int, overrides: dict[str, int] | None = None,
                 namespace: str = "argus", burst: int | None = None):
        self.local = RateLimiter(rate_per_minute, burst, dict(overrides or {}))
        self.rate_per_minute = rate_per_minute
        self.overrides = dict(overrides or {})
        self.namespace = namespace
        self.shared = storage_url is not None
        self._warned = 0.0
        if storage_url:
            from limits import storage
            from limits.aio.strategies import SlidingWindowCounterRateLimiter

            url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
            options = {"implementation": "redispy"} if "redis" in url.split("://", 1)[0] else {}
            self._storage = storage.storage_from_string(url, key_prefix="argus-limits", **options)
            self._strategy = SlidingWindowCounterRateLimiter(self._storage)

    def _item(self, key: str):
        from limits import RateLimitItemPerMinute

        return RateLimitItemPerMinute(max(1, self.overrides.get(key, self.rate_per_minute)))

    def _fallback(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning("rate-limit storage unreachable (%s); limiting per replica", type(exc).__name__)

    async def acquire(self, key: str) -> float:
        """Count one request for `key`: 0.0 when allowed, else seconds until the window lets it in."""
        if self.overrides.get(key, self.rate_per_minute) <= 0:
            return 60.0
        if not self.shared:
            return self.local.acquire(key)
        item = self._item(key)
        try:
            if await self._strategy.hit(item, self.namespace, key):
                return 0.0
            stats = await self._strategy.get_window_stats(item, self.namespace, key)
            return max(stats.reset_time - time.time(), 0.001)
        except Exception as exc:  # noqa: BLE001 - Redis down: keep serving, limit locally
            self._fallback(exc)
            return self.local.acquire(key)

    async def blocked(self, key: str) -> float:
        """Seconds until `key` may be counted again (0.0: now); counts nothing."""
        if not self.shared:
            return self.local.blocked(key)
        item = self._item(key)
        try:
            if await self._strategy.test(item, self.namespace, key):
                return 0.0
            stats = await self._strategy.get_window_stats(item, self.namespace, key)
            return max(stats.reset_time - time.time(), 0.001)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)
            return self.local.blocked(key)


def retry_after_header(wait_s: float) -> str:
    """Retry-After takes whole seconds; round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(wait_s)))


class BodySizeLimit:
    """ASGI middleware: 413 before the body is parsed, by Content-Length or by counting a streamed body.

    Pure ASGI (not BaseHTTPMiddleware) so the body is never buffered here.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, b'{"code":"bad_request","detail":"invalid Content-Length"}')
                if declared > self.max_bytes:
                    return await self._reject(send, declared)
        seen = 0
        rejected = False

        async def guarded_send(message):
            if not rejected:  # once we answered 413, whatever the app still sends is dropped
                await send(message)

        async def counting_receive():
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    await self._reject(send, seen)
                    return {"type": "http.disconnect"}  # the app stops reading, as if the client left
            return message

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, send, size: int):
        body = f'{{"code":"body_too_large","detail":"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"}}'
        await _send_json(send, 413, body.encode())


async def _send_json(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
