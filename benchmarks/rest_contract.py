"""The REST API against its own OpenAPI document, at benchmark length: starts a real `argus serve` on
a fresh temporary store (nothing created beforehand: the server creates the schema), with one key
holding every scope, then runs

    schemathesis run http://127.0.0.1:PORT/openapi.json -H "X-API-Key: ..." --checks all \\
        --phases examples,coverage,fuzzing,stateful --max-examples N --seed S --max-response-time T

and prints schemathesis' summary. Exit status: schemathesis' (0 = no failure).

    python benchmarks/rest_contract.py                       # 1,000 examples per operation, 2 s limit
    python benchmarks/rest_contract.py --examples 500 --max-response-time 2

The per-key and per-address limits are raised for the run (a fuzzer sends thousands of requests,
half of them invalid, from one address); everything else is infra/serve.yaml as shipped, on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services import local_serve  # noqa: E402
from services.security import SCOPES, hash_key, new_key  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=1000, help="schemathesis --max-examples (per operation)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-response-time", type=float, default=2.0, help="seconds; slower answers are failures")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    p.add_argument("--keep", action="store_true", help="keep the temporary store and Ray logs (path printed)")
    args = p.parse_args()

    temp = Path(tempfile.mkdtemp(prefix="ac", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    store_url = f"sqlite:///{temp / 'fresh.db'}"
    port = free_port()
    key = new_key()
    every_scope = [s for s in SCOPES]
    config = local_serve.load_config(REPO / "infra" / "serve.yaml", port=port, args={
        "api_key_hashes": {hash_key(key): every_scope},
        "rate_limit_per_minute": 10_000_000, "failure_rate_limit_per_minute": 10_000_000, "device": "cpu"})
    small = {"num_replicas": 1, "autoscaling_config": None, "ray_actor_options": {"num_cpus": 0}}
    config = local_serve.override(config, deployments={"Ingress": small, "FraudScorer": small, "Summarizer": small})
    (temp / "serve.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "ARGUS_HOME": str(temp / "h"), "ARGUS_STORE__URL": store_url, "HF_HUB_OFFLINE": "1"}
    argus = Path(sys.executable).parent / "argus"
    server = subprocess.Popen([str(argus), "serve", "--config", str(temp / "serve.yaml"), "--port", str(port),
                               "--num-cpus", str(args.num_cpus)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            if server.poll() is not None:
                print(f"argus serve exited {server.returncode}: {server.stderr.read()[-2000:]}", file=sys.stderr)
                return 2
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("argus serve not ready after 400 s", file=sys.stderr)
                return 2
            time.sleep(1)
        exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        cmd = [exe, "--no-color", "run", f"{url}/openapi.json", "-H", f"X-API-Key: {key}", "--checks", "all",
               "--phases", args.phases, "--max-examples", str(args.examples), "--seed", str(args.seed),
               "--max-response-time", str(args.max_response_time), "--workers", str(args.workers),
               "--request-timeout", "30"]
        shown = " ".join(c if not c.startswith("X-API-Key") else '"X-API-Key: <key with every scope>"' for c in cmd)
        print(f"# argus serve on a fresh store ({store_url}), port {port}\n# {shown}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        out = result.stdout + result.stderr
        lines = [ln for ln in out.splitlines() if len(ln) < 2000]  # failure reproductions can be huge bodies
        print("\n".join(lines[-120:]))
        print(json.dumps({"examples_per_operation": args.examples, "seed": args.seed,
                          "max_response_time_s": args.max_response_time, "exit_status": result.returncode,
                          "wall_s": round(time.perf_counter() - start, 1)}))
        return result.returncode
    finally:
        if server.poll() is None:  # argus serve stops Serve and Ray on SIGTERM
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if args.keep:
            print(f"# kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
