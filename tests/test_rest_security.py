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
