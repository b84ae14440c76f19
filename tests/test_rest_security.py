"""API keys (hashes, scopes, CLI helpers) and the per-key token bucket, without Ray."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.security import KeyConfigError, KeyRing, RateLimiter, hash_key


def test_keyring_authenticates_by_hash_and_rejects_plain_keys_in_config():
    ring = KeyRing({hash_key("k1"): ["fraud:score"]})
    assert ring.authenticate("k1").scopes == frozenset({"fraud:score"})
    assert ring.authenticate("k2") is None and ring.authenticate(None) is None
    with pytest.raises(KeyConfigError, match="not a sha256"):
        KeyRing({"plain-text-key": ["fraud:score"]})
    with pytest.raises(KeyConfigError, match="unknown scope"):
        KeyRing({hash_key("k1"): ["admin"]})


def test_token_bucket_refills_and_says_when():
    now = [0.0]
    limiter = RateLimiter(rate_per_minute=60, burst=2, overrides={"slow": 6}, clock=lambda: now[0])
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") == 0.0
    wait = limiter.acquire("a")
    assert wait == pytest.approx(1.0)  # 60/min: one token a second
    now[0] += 1.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0  # buckets are per key
    assert limiter.acquire("slow") == 0.0 and limiter.acquire("slow") == 0.0
    assert limiter.acquire("slow") == pytest.approx(10.0)  # its own 6/min: a token every 10 s


def test_keys_cli_prints_config_entries():
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "hash", "secret-1", "--scopes", "fraud:score"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {hashlib.sha256(b"secret-1").hexdigest(): ["fraud:score"]}

    result = runner.invoke(app, ["keys", "new", "--scopes", "results:read"])
    assert result.exit_code == 0
    key = re.search(r"(argus_[A-Za-z0-9_-]+)", result.stdout).group(1)
    entry = json.loads(result.stdout[result.stdout.index("{"):])
    assert KeyRing(entry).authenticate(key).scopes == frozenset({"results:read"})

    result = runner.invoke(app, ["keys", "new", "--scopes", "root"])
    assert result.exit_code != 0


def test_key_entries_carry_a_tenant_and_the_admin_scope():
    ring = KeyRing({hash_key("a"): {"scopes": ["results:read"], "tenant": "acme"},
                    hash_key("b"): ["results:read", "results:admin"]})
    a, b = ring.authenticate("a"), ring.authenticate("b")
    assert (a.tenant, a.is_admin) == ("acme", False)
    assert (b.tenant, b.is_admin) == (hash_key("b")[:12], True)  # no tenant given: the key is its own
    with pytest.raises(KeyConfigError, match="unknown field"):
        KeyRing({hash_key("c"): {"scopes": ["results:read"], "owner": "x"}})


def test_two_limiters_sharing_redis_hold_one_limit():
    """Two Ingress replicas = two limiters on one Redis: the key's budget is shared, not doubled."""
    import asyncio
    import uuid

    from services.security import SharedLimiter

    key = uuid.uuid4().hex  # a fresh key per run: an earlier run's window does not count

    async def run():
        a = SharedLimiter("redis://127.0.0.1:6379/0", 5, namespace="test")
        b = SharedLimiter("redis://127.0.0.1:6379/0", 5, namespace="test")
        waits = [await (a if i % 2 else b).acquire(key) for i in range(7)]
        return waits, await a.blocked(key), await b.blocked("other-" + key)

    waits, blocked, other = asyncio.run(run())
    assert waits[:5] == [0.0] * 5 and all(w > 0 for w in waits[5:])
    assert blocked > 0 and other == 0.0


def test_limiter_falls_back_per_replica_when_redis_is_unreachable():
    import asyncio

    from services.security import SharedLimiter

    async def run():
        limiter = SharedLimiter("redis://127.0.0.1:1/0", 2)  # nothing listens on port 1
        return [await limiter.acquire("k") for _ in range(3)]

    waits = asyncio.run(run())
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0  # still limited, by the replica's own bucket
