"""Cost of the great-expectations validation suites, per batch size.

Builds the suites once (timed separately), then validates batches of transactions and scores
(1% bad rows) of several sizes and reports milliseconds per batch and per 10,000 rows, plus the
fixed per-batch overhead (the time for a batch of 1 row), for the GX engine and the "fast" engine
(the same checks in pandas/numpy). A pydantic parse of the same transactions is a reference.

    python benchmarks/validation_cost.py
    python benchmarks/validation_cost.py --sizes 1,100,1000,10000,50000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime, timezone

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=150)


def transactions(n: int) -> list[dict]:
    rows = [{"transaction_id": f"t{i}", "timestamp": "2018-04-01T00:00:31+00:00", "customer_id": f"c{i % 500}",
             "terminal_id": f"k{i % 900}", "amount": 10.0 + i % 300} for i in range(n)]
    for i in range(0, n, 100):
        rows[i]["amount"] = -1.0  # 1% bad
    return rows


def scores(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        s = (i % 100) / 100
        rows.append({"transaction_id": f"t{i}", "score": s, "model_version": "m1",
                     "decision": "decline" if s >= 0.5 else "review" if s >= 0.2 else "approve"})
    for i in range(0, n, 100):
        rows[i]["decision"] = "approve" if rows[i]["decision"] != "approve" else "decline"
    return rows


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,100,1000,10000,50000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from pipelines.contracts import Transaction
    from pipelines.validation import Suites, validate_scores, validate_transactions

    start = time.perf_counter()
    Suites.get()
    build_s = time.perf_counter() - start

    table = Table(title=f"great-expectations validation cost (suites built once in {build_s:.2f} s; "
                        f"median of {args.repeats})")
    for col in ("kind", "engine", "rows", "ms / batch", "ms / 10k rows", "rows failed"):
        table.add_column(col, justify="left" if col in ("kind", "engine") else "right")
    for n in (int(x) for x in args.sizes.split(",")):
        for kind, make, validate in (("transactions", transactions, validate_transactions),
                                     ("scores", scores, lambda r, engine: validate_scores(
                                         r, alert_threshold=0.5, review_threshold=0.2, engine=engine))):
            rows = make(n)
            for engine in ("gx", "fast"):
                result = validate(rows, engine=engine)
                seconds = timed(lambda: validate(rows, engine=engine), args.repeats)
                table.add_row(kind, engine, f"{n:,}", f"{seconds * 1e3:,.1f}", f"{seconds * 1e3 * 10_000 / n:,.1f}",
                              f"{len(result.failures):,}")
        rows = transactions(n)

        def pydantic_check() -> None:
            now = datetime.now(timezone.utc).timestamp() + 300
            for r in rows:
                try:
                    t = Transaction(**r)
                    _ = t.amount <= 1e6 and t.timestamp.timestamp() <= now
                except ValueError:
                    pass

        seconds = timed(pydantic_check, args.repeats)
        table.add_row("[dim]transactions[/]", "[dim]pydantic parse[/]", f"{n:,}", f"{seconds * 1e3:,.1f}",
                      f"{seconds * 1e3 * 10_000 / n:,.1f}", "")
    console.print(table)


if __name__ == "__main__":
    main()
