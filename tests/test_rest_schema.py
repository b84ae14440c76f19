"""Schemathesis against the live OpenAPI spec of the Serve app: generated requests (valid and
invalid, with a valid API key) never get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def rest_schema(serve_app):
    return schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("rest_schema")


@schema.include(path_regex="^/v1/").parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, serve_app):
    response = case.call(headers={"X-API-Key": serve_app.keys["all"]}, timeout=60)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code in (200, 404, 413, 422), response.text[:300]
