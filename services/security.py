"""API keys, scopes, per-key rate limits and the request size limit for the REST ingress.

Keys are configured as sha256 hex digests mapped to scopes (`serve.api_key_hashes`), so the config
never holds a usable key. A request names its key in the `X-API-Key` header; the ingress hashes it
and looks the digest up (constant-time compare per candidate is unnecessary: the lookup is by
digest, and a digest reveals nothing about the key).

Rate limiting is a token bucket per key *inside each ingress replica*: with N ingress replicas a
key gets up to N x the configured rate cluster-wide. That is the documented trade-off for having
no shared dependency on the hot path.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from pipelines.errors import ArgusError

API_KEY_HEADER = "X-API-Key"
SCOPES = ("fraud:score", "reports:summarize", "results:read")


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

    @property
    def key_id(self) -> str:
        return self.key_hash[:12]


class KeyRing:
    """sha256(key) -> scopes, validated once at start so a typo fails the deploy, not a request."""

    def __init__(self, api_key_hashes: dict[str, list[str]]):
        self._by_hash: dict[str, frozenset[str]] = {}
        for digest, scopes in api_key_hashes.items():
            digest = digest.strip().lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise KeyConfigError(
                    f"serve.api_key_hashes has an entry that is not a sha256 hex digest ({digest[:8]}...); "
                    "use `argus keys hash <key>`"
                )
            self._by_hash[digest] = frozenset(check_scopes(list(scopes)))

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, key: str | None) -> Principal | None:
        if not key:
            return None
        digest = hash_key(key)
        scopes = self._by_hash.get(digest)
        return None if scopes is None else Principal(digest, scopes)


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
                    return await _send_json(send, 400, b'{"detail":"invalid Content-Length"}')
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
        body = f'{{"detail":"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"}}'
        await _send_json(send, 413, body.encode())


async def _send_json(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
