"""Schemathesis (4.x) against the live OpenAPI spec of the Serve app: generated requests for every
/v1 operation, with a valid API key, never get a 5xx and only documented client errors.

The schema is loaded from the running app inside the test (its URL is known only once the session
fixture has started Serve); each operation's Hypothesis strategy is drawn from directly."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPERATIONS = [("POST", "/v1/fraud/score"), ("POST", "/v1/reports/summarize"), ("GET", "/v1/results/{result_id}"),
              ("GET", "/v1/ping")]


@pytest.fixture(scope="module")
def live_schema(serve_app):
    return schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json")


def test_spec_lists_the_operations(live_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in live_schema.get_all_operations()}
    assert set(OPERATIONS) <= found


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_server_errors(live_schema, serve_app, method, path):
    operation = live_schema[path][method]
    seen: dict[int, int] = {}

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              database=None)
    def check(case):
        response = case.call(base_url=serve_app.url, headers={"X-API-Key": serve_app.keys["all"]}, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (f"{method} {case.formatted_path} -> {response.status_code}: "
                                            f"{response.text[:300]}\nreplica errors:\n{serve_app.errors()}")
        assert response.status_code in (200, 404, 413, 422), response.text[:300]

    check()
    assert seen, "no requests were generated"
