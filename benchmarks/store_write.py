"""Bulk upsert throughput of the results store (fraud_scores), per backend and write method.

For each (backend, method): upsert N fresh rows in batches (inserts), then upsert the same N rows
again with changed scores (updates), and report rows/s for both. PostgreSQL runs in a scratch
schema that is dropped afterwards; SQLite in a temporary file.

    python benchmarks/store_write.py                       # 200k rows, batches of 5000
    python benchmarks/store_write.py --rows 50000 --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table
from sqlalchemy import create_engine, text

from pipelines.store import Store

console = Console(width=150)


def make_rows(n: int, version: str, offset: float) -> list[dict]:
    now = datetime.now(timezone.utc)
    return [{"transaction_id": f"tx-{i:09d}", "score": (i % 1000) / 1000 * 0.5 + offset, "decision": "approve",
             "reasons": [{"source": "current", "feature": "amount", "weight": 0.31, "detail": "large"},
                         {"source": "customer_history", "feature": "velocity", "weight": 0.12, "detail": ""}],
             "model_version": version, "scored_at": now, "customer_id": f"c{i % 5000}", "terminal_id": f"k{i % 10000}",
             "timestamp": now, "amount": 10.0 + i % 500} for i in range(n)]


def server_cpu_s(store: Store) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving this store (same host: /proc)."""
    if store.dialect != "postgresql":
        return 0.0
    with store.engine.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = 'argus_bench'")).scalars()
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # server on another host: no server CPU figure
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def run(store: Store, rows: int, batch: int, label: str) -> list[float]:
    """[insert rows/s, re-upsert rows/s, client CPU µs/row, server CPU µs/row] (both phases).

    Wall-clock rates depend on what else runs on the machine; CPU per row does not (much), so
    1e6 / (client + server µs/row) is the rate of one otherwise idle core doing both sides."""
    rates, cpu = [], 0.0
    server_start = server_cpu_s(store)
    for phase, offset in (("insert", 0.0), ("re-upsert", 0.25)):
        data = make_rows(rows, "bench", offset)
        start, cpu_start = time.perf_counter(), time.process_time()
        for lo in track(range(0, rows, batch), description=f"{label} {phase}", console=console, transient=True):
            store.upsert_scores(data[lo:lo + batch])
        rates.append(rows / (time.perf_counter() - start))
        cpu += time.process_time() - cpu_start
    server = server_cpu_s(store) - server_start
    assert store.count("fraud_scores") == rows, "upsert lost or duplicated rows"
    return [*rates, cpu / (2 * rows) * 1e6, server / (2 * rows) * 1e6]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--methods", default="copy,executemany,values")
    ap.add_argument("--no-sqlite", action="store_true")
    args = ap.parse_args()

    load = os.getloadavg()[0]
    table = Table(title=f"fraud_scores bulk upsert: {args.rows:,} rows, batches of {args.batch:,}",
                  caption=f"{os.cpu_count()} CPUs, load average {load:.1f} at start (wall-clock rates include contention)")
    for col in ("backend", "method", "insert rows/s", "re-upsert rows/s", "client CPU µs/row",
                "server CPU µs/row", "rows/s per idle core"):
        table.add_column(col, justify="right" if "rows" in col else "left")

    admin = create_engine(args.pg_url)
    for method in args.methods.split(","):
        schema = f"argus_bench_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            store = Store.from_url(f"{args.pg_url}?options=-csearch_path%3D{schema}&application_name=argus_bench",
                                   method=method)
            store.create_schema()
            ins, upd, cpu, server = run(store, args.rows, args.batch, f"postgresql/{method}")
            store.close()
            table.add_row("postgresql", method, f"{ins:,.0f}", f"{upd:,.0f}", f"{cpu:.1f}", f"{server:.1f}",
                          f"{1e6 / (cpu + server):,.0f}")
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()

    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.from_url(f"sqlite:///{Path(tmp) / 'bench.db'}")
            store.create_schema()
            ins, upd, cpu, _ = run(store, args.rows, args.batch, "sqlite/executemany")
            store.close()
            table.add_row("sqlite (WAL)", "executemany", f"{ins:,.0f}", f"{upd:,.0f}", f"{cpu:.1f}", "(in-process)",
                          f"{1e6 / cpu:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
