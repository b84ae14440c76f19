"""Schemathesis (4.x) against the live OpenAPI document of the Serve app: every check (`-c all`:
no 5xx, status codes, content types, headers and bodies as documented, schema-invalid requests
rejected, schema-valid ones accepted, auth not ignored, ...), in every phase (examples, coverage,
fuzzing, and stateful sequences that follow the document's links from POST /v1/fraud/score and
/v1/reports/summarize to GET /v1/results/{id}, and from GET /v1/alerts to POST
/v1/alerts/{id}/disposition), 200 examples per operation (the alert routes' twins, `POST
/v1/alerts/disposition` and `GET /v1/alerts/history?transaction_id=`, included), a fixed seed.

It runs the `schemathesis` command line, as an operator would (benchmarks/rest_contract.py is the
same at 1,000+ examples against `argus serve`), and fails with its summary.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPERATIONS = {("POST", "/v1/fraud/score"), ("POST", "/v1/reports/summarize"), ("GET", "/v1/results/{result_id}"),
              ("GET", "/v1/ping"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/alerts"),
              ("POST", "/v1/alerts/{transaction_id}/disposition"), ("POST", "/v1/alerts/disposition"),
              ("GET", "/v1/alerts/{transaction_id}/history"), ("GET", "/v1/alerts/history")}


def schemathesis_command(url: str, key: str, examples: int, seed: int, max_response_time_s: float,
                         workers: int = 2) -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    return [exe, "--no-color", "run", f"{url}/openapi.json", "-H", f"X-API-Key: {key}", "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(examples), "--seed", str(seed),
            "--max-response-time", str(max_response_time_s), "--workers", str(workers), "--request-timeout", "30"]


def test_spec_documents_every_operation_body_and_status(serve_app):
    import httpx

    spec = httpx.get(f"{serve_app.url}/openapi.json", timeout=30).json()
    found = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert OPERATIONS <= found
    score = spec["paths"]["/v1/fraud/score"]["post"]
    summarize = spec["paths"]["/v1/reports/summarize"]["post"]
    for op in (score, summarize):
        assert len(op["requestBody"]["content"]["application/json"]["schema"]["oneOf"]) == 2
        assert {"200", "401", "403", "413", "422", "429", "503", "504"} <= set(op["responses"])
        assert "GetResult" in op["responses"]["200"]["links"]
    assert "DisposeAlert" in spec["paths"]["/v1/alerts"]["get"]["responses"]["200"]["links"]
    assert {"200", "401", "403", "404", "422", "429", "503"} <= set(spec["paths"]["/v1/results/{result_id}"]["get"]["responses"])
    assert {"200", "401", "403", "404", "422", "429", "503"} <= set(spec["paths"]["/v1/alerts"]["get"]["responses"])
    dispose = spec["paths"]["/v1/alerts/{transaction_id}/disposition"]["post"]
    assert {"200", "401", "403", "404", "413", "422", "429", "503"} <= set(dispose["responses"])
    assert dispose["requestBody"]["required"] is True
    # the twins that take any id (one with "/", ".", "..") in the body or the query
    by_body = spec["paths"]["/v1/alerts/disposition"]["post"]
    assert {"200", "401", "403", "404", "413", "422", "429", "503"} <= set(by_body["responses"])
    assert by_body["requestBody"]["required"] is True
    for path in ("/v1/alerts/{transaction_id}/history", "/v1/alerts/history"):
        assert {"200", "401", "403", "404", "422", "429", "503"} <= set(spec["paths"][path]["get"]["responses"])


def test_schemathesis_finds_nothing(serve_app):
    cmd = schemathesis_command(serve_app.url, serve_app.keys["all"], examples=200, seed=17, max_response_time_s=5)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    out = result.stdout + result.stderr
    summary = out[out.rfind("SUMMARY"):] if "SUMMARY" in out else out[-3000:]
    assert result.returncode == 0, (f"schemathesis failed:\n{out[-6000:]}\nreplica errors:\n{serve_app.errors()}")
    assert "0 failures" in summary or "passed" in summary, summary
    links = re.search(r"(\d+) covered / (\d+) selected", out)
    # the document has three links (GetResult from both POSTs, DisposeAlert from GET /v1/alerts) and
    # schemathesis may infer one more; how many its stateful phase follows varies between runs even
    # with a fixed seed (a fresh-clone CI run covered 2 of 4, this machine 3), so at least two are
    # required here; every operation, DisposeAlert's included, is exercised by the other phases anyway
    assert "Stateful" in out and links and int(links[1]) >= 2, (links and links[0], summary)
