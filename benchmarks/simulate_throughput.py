"""Producer throughput of the transaction simulator against the embedded broker.

Runs the real commands: `argus infra up --port 0`, `argus simulate transactions --rate R --seconds S`,
then counts the records on the transactions topic with a consumer (and checks each one decodes as a
`Transaction`), then `argus infra down`. Exit code 1 if the count is not exactly R x S.

    python benchmarks/simulate_throughput.py [--rate 5000] [--seconds 10] [--partitions 4]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    expected = int(round(args.rate * args.seconds))

    home = tempfile.mkdtemp(prefix="argus-bench-")
    env = {**os.environ, "ARGUS_HOME": home, "ARGUS_BROKER__STATE_DIR": f"{home}/broker"}
    env.pop("ARGUS_KAFKA__BOOTSTRAP_SERVERS", None)
    argus = [sys.executable, "-c", "from services.cli import main; main()"]

    def run(*cmd: str) -> subprocess.CompletedProcess:
        out = subprocess.run(argus + list(cmd), cwd=REPO, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stdout + out.stderr)
            raise SystemExit(f"`argus {' '.join(cmd)}` failed")
        return out

    run("infra", "up", "--port", "0", "--partitions", str(args.partitions))
    try:
        from infra.local_broker import read_state
        from pipelines.contracts import Transaction, decode
        from pipelines.kafka_io import make_consumer, with_bootstrap
        from pipelines.settings import Settings

        state = read_state(Path(home) / "broker")
        print(f"broker: tansu at {state.bootstrap}, {args.partitions} partitions")
        t0 = time.monotonic()
        sim = run("simulate", "transactions", "--rate", f"{args.rate:g}", "--seconds", f"{args.seconds:g}", "--seed", str(args.seed),
                  "--label-delay", "1")
        wall = time.monotonic() - t0
        acked = re.search(r"transactions acked after\s*│\s*([\d.]+) s \(([\d,]+) tx/s\)", sim.stdout)
        print(sim.stdout.strip())
        settings = with_bootstrap(Settings(), state.bootstrap)

        from kafka import TopicPartition

        consumer = make_consumer(settings, None, None)
        topic = settings.topics.transactions
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        count, invalid, idle = 0, 0, 0
        t1 = time.monotonic()
        while idle < 8:
            batch = consumer.poll(timeout_ms=250)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    count += 1
                    try:
                        decode(Transaction, r.value)
                    except ValueError:
                        invalid += 1
        consume_s = time.monotonic() - t1 - 8 * 0.25
        consumer.close()
    finally:
        run("infra", "down")

    print(f"asked:    --rate {args.rate:g} --seconds {args.seconds:g} -> {expected} transactions")
    if acked:
        print(f"producer: all {expected} acknowledged (acks=all) {acked.group(1)} s after the first block ({acked.group(2)} tx/s)")
    print(f"command:  `argus simulate transactions` wall time {wall:.2f} s (incl. interpreter start, population build, label delay)")
    print(f"consumer: counted {count} records on {topic} ({invalid} invalid), read+decoded in ~{consume_s:.2f} s")
    ok = count == expected and invalid == 0
    print("RESULT:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
