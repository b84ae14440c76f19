"""`argus demo`: the whole embedded default on one machine, start to finish.

A private tansu broker, a local Ray, the shipped MoE checkpoints and a SQLite store: simulated
transactions (plus a few malformed records) and reports flow through the real stream jobs; the
scores, alerts, summaries and dead letters that land in the store are then shown as tables.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from pipelines.settings import Settings, get_settings

# Records that break the contract on purpose, so the dead-letter path shows up in the demo.
MALFORMED = [
    b"{not json",
    json.dumps({"transaction_id": "bad-1", "timestamp": "2024-01-01T00:00:00Z", "customer_id": "c",
                "terminal_id": "t", "amount": -5.0}).encode(),
    json.dumps({"transaction_id": "bad-2", "customer_id": "c", "terminal_id": "t", "amount": 1.0}).encode(),
]


@dataclass
class DemoResult:
    produced: int = 0
    malformed: int = 0
    reports: int = 0
    stream_counts: list[dict[str, int]] = field(default_factory=list)
    report_counts: dict[str, int] = field(default_factory=dict)
    store_stats: dict[str, int] = field(default_factory=dict)
    top_alerts: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def demo_settings(home: Path) -> Settings:
    """The user's settings, with the store redirected to a fresh SQLite file under `home`."""
    base = get_settings()
    db = home / "demo.db"
    db.unlink(missing_ok=True)
    store = base.store.model_copy(update={"url": base.store.url.__class__(f"sqlite:///{db}")})
    return base.model_copy(update={"home": home, "store": store})


def run_demo(transactions: int = 20_000, rate: float = 5_000.0, reports: int = 4, seed: int = 7,
             home: Path | None = None, console: Console | None = None) -> DemoResult:
    from infra.local_broker import embedded_broker
    from pipelines.kafka_io import make_producer, with_bootstrap
    from services.report_stream_runner import run_report_stream
    from pipelines.simulate_reports import generate_reports, produce_reports
    from pipelines.simulate_transactions import SimulatorConfig, run_to_kafka
    from pipelines.store import Store
    from services.fraud_stream_actor import run_stream
    from services.local_ray import ensure_ray

    console = console or Console()
    settings = demo_settings((home or get_settings().home / "demo").resolve())
    settings.home.mkdir(parents=True, exist_ok=True)
    url = settings.store.url.get_secret_value()
    result = DemoResult()
    t0 = time.monotonic()
    with embedded_broker(settings, port=0, partitions=2) as bootstrap:
        settings = with_bootstrap(settings, bootstrap)
        console.print(f"[bold]broker[/] tansu at {bootstrap}; [bold]store[/] {url}")
        store = Store.from_url(url)
        store.create_schema()
        stop_ray = ensure_ray(2)
        try:
            with console.status(f"producing {transactions:,} simulated transactions at {rate:,.0f}/s"):
                sim = run_to_kafka(settings, rate, transactions / rate, SimulatorConfig(seed=seed), label_delay_s=1.0)
                producer = make_producer(settings)
                for raw in MALFORMED:
                    producer.send(settings.topics.transactions, raw, key=b"demo")
                producer.flush(30)
                producer.close(10)
                result.produced, result.malformed = sim.transactions, len(MALFORMED)
                result.reports = produce_reports(settings, generate_reports(reports, seed=seed))
            with console.status("fraud stream: scoring until the topic is drained"):
                result.stream_counts = run_stream(settings, url, consumers=1, idle_exit_s=3.0, metrics_port=None)
            with console.status("report stream: summarising until the topic is drained"):
                result.report_counts = run_report_stream(settings, url, idle_exit_s=3.0).as_dict()
        finally:
            stop_ray()
        result.store_stats = store.stats()
        result.top_alerts, result.summaries = _highlights(store)
        store.close()
    result.seconds = time.monotonic() - t0
    return result


def _highlights(store: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from pipelines.store import alerts, report_summaries

    with store.engine.connect() as conn:
        top = conn.execute(select(alerts).order_by(alerts.c.score.desc()).limit(5)).mappings().all()
        sums = conn.execute(select(report_summaries).limit(4)).mappings().all()
    return [dict(r) for r in top], [dict(r) for r in sums]


def print_demo(result: DemoResult, console: Console) -> None:
    counts = Table(title=f"argus demo: what landed in the store ({result.seconds:.0f} s)")
    counts.add_column("what")
    counts.add_column("produced", justify="right")
    counts.add_column("in the store", justify="right")
    stats = result.store_stats
    counts.add_row("transactions scored", f"{result.produced:,}", f"{stats.get('fraud_scores', 0):,}")
    counts.add_row("alerts", "", f"{stats.get('alerts', 0):,}")
    counts.add_row("malformed records -> dead letters", f"{result.malformed}", f"{stats.get('dead_letters', 0):,}")
    counts.add_row("reports summarised", f"{result.reports}", f"{stats.get('report_summaries', 0):,}")
    console.print(counts)

    if result.top_alerts:
        alerts_table = Table(title="highest-scoring alerts")
        for col in ("transaction", "score", "model", "top reasons"):
            alerts_table.add_column(col)
        for a in result.top_alerts:
            reasons = a.get("reasons") or []
            if isinstance(reasons, str):
                reasons = json.loads(reasons)
            why = ", ".join(f"{r.get('feature')} ({r.get('source')})" for r in reasons[:3])
            alerts_table.add_row(str(a["transaction_id"])[:16], f"{a['score']:.3f}", str(a["model_version"]), why)
        console.print(alerts_table)

    if result.summaries:
        sums = Table(title="report summaries", show_lines=True)
        for col in ("report", "domain", "summary (first 200 chars)", "model"):
            sums.add_column(col)
        for s in result.summaries:
            sums.add_row(str(s["report_id"]), str(s["domain"]), str(s["summary"])[:200], str(s["model_version"]))
        console.print(sums)
