"""The `argus` command line. Each command is a thin wrapper: parse options, call the module that
does the work (imported lazily so `argus --help` stays fast), print a rich summary.

Errors a user can act on (`ArgusError` and its kin) print one red line and exit non-zero.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pipelines.errors import ArgusError

console = Console(stderr=False)
err_console = Console(stderr=True)

app = typer.Typer(name="argus", help="Argus: MoE fraud scoring and report summarisation.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
infra_app = typer.Typer(help="The embedded broker (tansu) for one machine; production uses Kafka (infra/).",
                        no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
simulate_app = typer.Typer(help="Simulated transactions and reports.", no_args_is_help=True)
train_app = typer.Typer(help="Train the MoE models.", no_args_is_help=True)
stream_app = typer.Typer(help="Long-running stream jobs on Ray.", no_args_is_help=True)
fraud_app = typer.Typer(help="Offline fraud tools.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluation.", no_args_is_help=True)
store_app = typer.Typer(help="The results store (PostgreSQL or SQLite).", no_args_is_help=True)
app.add_typer(store_app, name="store")
alerts_app = typer.Typer(help="The fraud review queue: open alerts and investigators' dispositions.",
                         no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
models_app = typer.Typer(help="The fraud model registry: champion, challengers, promotions (audited), retraining.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
for sub, name in [(infra_app, "infra"), (config_app, "config"), (simulate_app, "simulate"), (train_app, "train"),
                  (stream_app, "stream"), (fraud_app, "fraud"), (eval_app, "eval")]:
    app.add_typer(sub, name=name)


def main() -> None:
    """Entry point that turns ArgusError into one clear line and a non-zero exit."""
    try:
        app()
    except ArgusError as exc:
        from rich.markup import escape  # a message is text: "pip install 'argus[eval]'" is no markup tag

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(exc.exit_code)


@app.callback()
def _root(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file (or ARGUS_CONFIG).")) -> None:
    if config is not None:
        import os

        os.environ["ARGUS_CONFIG"] = str(config)


# --- config -------------------------------------------------------------------------------------

@config_app.command("show")
def config_show() -> None:
    """Print the effective configuration (environment + YAML), secrets masked."""
    from pipelines.settings import get_settings

    console.print_json(json.dumps(get_settings().masked()))


# --- infra (embedded broker) ---------------------------------------------------------------------

@infra_app.command("up")
def infra_up(port: Optional[int] = typer.Option(None, "--port", help="Port (default: broker.port; 0 = any free port)."),
             partitions: Optional[int] = typer.Option(None, "--partitions", min=1, help="Partitions per topic (default: topics.partitions)."),
             storage_engine: Optional[str] = typer.Option(None, "--storage-engine", help="tansu storage URL (default: broker.storage_engine, memory).")) -> None:
    """Start the embedded tansu broker on loopback and create the Argus topics."""
    from rich.table import Table

    from infra.local_broker import start
    from pipelines.settings import get_settings

    settings = get_settings()
    with console.status("starting tansu broker..."):
        state = start(settings, port=port, partitions=partitions, storage_engine=storage_engine)
    table = Table(title=f"broker up at {state.bootstrap}", show_header=False)
    for key, value in [("pid", state.pid), ("bootstrap", state.bootstrap), ("storage", state.storage_engine),
                       ("partitions/topic", state.partitions), ("topics", ", ".join(settings.topics.all())),
                       ("log", state.log_path)]:
        table.add_row(key, str(value))
    console.print(table)
    if state.port != settings.broker.port or settings.kafka.bootstrap_servers != state.bootstrap:
        console.print(f"[yellow]clients:[/] export ARGUS_KAFKA__BOOTSTRAP_SERVERS={state.bootstrap}")


@infra_app.command("down")
def infra_down() -> None:
    """Stop the embedded broker (SIGTERM, then SIGKILL)."""
    from infra.local_broker import stop
    from pipelines.settings import get_settings

    state = stop(get_settings())
    if state is None:
        console.print("no embedded broker is running")
    else:
        console.print(f"[green]stopped[/] broker pid {state.pid} at {state.bootstrap}")


@infra_app.command("status")
def infra_status() -> None:
    """Show whether the embedded broker runs and answers, and its topics."""
    from rich.table import Table

    from infra.local_broker import status
    from pipelines.settings import get_settings

    info = status(get_settings())
    if not info["running"]:
        console.print("[yellow]broker not running[/]" + (f" (stale state for {info['bootstrap']})" if info["bootstrap"] else ""))
        raise typer.Exit(1)
    table = Table(title="embedded broker", show_header=False)
    for key in ["bootstrap", "pid", "reachable", "storage_engine", "partitions", "uptime_s", "topics", "log_path"]:
        value = info.get(key)
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
    if not info["reachable"]:
        raise typer.Exit(1)


# --- simulate ------------------------------------------------------------------------------------

def _kafka_settings(bootstrap: Optional[str]):
    """Settings with the bootstrap address from --bootstrap, else the running embedded broker, else config."""
    from infra.local_broker import resolve_settings
    from pipelines.kafka_io import with_bootstrap

    settings = resolve_settings()
    return with_bootstrap(settings, bootstrap) if bootstrap else settings


@simulate_app.command("transactions")
def simulate_transactions(
    rate: float = typer.Option(100.0, "--rate", min=0.001, help="Transactions per second."),
    seconds: float = typer.Option(10.0, "--seconds", min=0.0, help="How long to produce (total = rate x seconds)."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed, same customers, terminals and fraud."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write .jsonl/.parquet (or handbook .csv/.csv.gz) instead of Kafka."),
    fraud_rate: float = typer.Option(0.01, "--fraud-rate", min=0.0, max=0.5, help="Target share of fraudulent transactions."),
    label_delay: float = typer.Option(2.0, "--label-delay", min=0.0, help="Seconds after a fraud before its label is published."),
    speedup: float = typer.Option(1.0, "--speedup", min=0.001, help="Simulated seconds per wall second (timestamps)."),
    negatives: bool = typer.Option(False, "--negatives/--frauds-only", help="Also publish is_fraud=false labels."),
    customers: int = typer.Option(5000, "--customers", min=1),
    terminals: int = typer.Option(10000, "--terminals", min=10),
    mix: str = typer.Option("all", "--mix", help="Fraud typology mix: all | large_amounts | normal_amounts."),
    drift_to: Optional[str] = typer.Option(None, "--drift-to", help="Switch to this mix mid-stream (a drift scenario)."),
    drift_after: float = typer.Option(0.0, "--drift-after", min=0.0, help="Simulated seconds after the first transaction at which --drift-to starts."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers (default: config / embedded broker)."),
) -> None:
    """Produce synthetic card transactions (six tagged fraud typologies) and delayed fraud labels."""
    from datetime import timedelta

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from pipelines.simulate_transactions import SimulatorConfig, run_to_file, run_to_kafka

    try:
        cfg = SimulatorConfig(n_customers=customers, n_terminals=terminals, fraud_rate=fraud_rate, seed=seed, mix=mix,
                              drift_to=drift_to, drift_after_s=drift_after)
    except ValueError as exc:
        raise ArgusError(str(exc)) from None
    if output is not None:
        with console.status(f"writing {output}..."):
            result = run_to_file(output, rate, seconds, cfg, label_delay=timedelta(seconds=label_delay * speedup), negatives=negatives)
    else:
        from pipelines.kafka_io import wait_for_broker

        settings = _kafka_settings(bootstrap)
        wait_for_broker(settings.kafka.bootstrap_servers, 10.0)
        total = int(round(rate * seconds))
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
            task = bar.add_task(f"-> {settings.topics.transactions}", total=total)
            result = run_to_kafka(settings, rate, seconds, cfg, label_delay_s=label_delay, speedup=speedup, negatives=negatives,
                                  progress=lambda done, _total: bar.update(task, completed=done))
    table = Table(title=f"simulated transactions -> {result.destination}", show_header=False)
    table.add_row("transactions", str(result.transactions))
    table.add_row("frauds", f"{result.frauds} ({result.frauds / max(1, result.transactions):.2%})")
    table.add_row("labels", str(result.labels))
    for name, count in sorted(result.by_scenario.items()):
        table.add_row(f"  {name}", str(count))
    if result.tx_elapsed_s:
        table.add_row("transactions acked after", f"{result.tx_elapsed_s:.2f} s ({result.transactions / result.tx_elapsed_s:,.0f} tx/s)")
        table.add_row("elapsed (incl. label delay)", f"{result.elapsed_s:.2f} s")
    console.print(table)


@simulate_app.command("reports")
def simulate_reports(
    count: int = typer.Option(10, "--count", "-n", min=1, help="How many reports."),
    domain: Optional[str] = typer.Option(None, "--domain", help="finance | medical (default: alternate)."),
    words: Optional[int] = typer.Option(None, "--words", min=0, help="Approximate words per report (60000 ~ a 100-page filing)."),
    seed: int = typer.Option(0, "--seed"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="A directory (.txt + .json per report), .jsonl or .parquet, instead of Kafka."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers (default: config / embedded broker)."),
) -> None:
    """Produce synthetic finance (results, 10-K, earnings calls) and medical (radiology, discharge) reports."""
    from pipelines.simulate_reports import generate_reports, produce_reports, write_reports

    if domain not in (None, "finance", "medical"):
        raise ArgusError(f"unknown domain {domain!r}: use finance or medical")
    reports = generate_reports(count, domain, seed, words)
    if output is not None:
        n = write_reports(reports, output)
        console.print(f"[green]wrote[/] {n} reports to {output}")
    else:
        from pipelines.kafka_io import wait_for_broker

        settings = _kafka_settings(bootstrap)
        wait_for_broker(settings.kafka.bootstrap_servers, 10.0)
        with console.status(f"producing {count} reports to {settings.topics.reports}..."):
            n = produce_reports(settings, reports)
        console.print(f"[green]produced[/] {n} reports to {settings.topics.reports} at {settings.kafka.bootstrap_servers}")


# --- store --------------------------------------------------------------------------------------

def _store_url(url: Optional[str]) -> str:
    from pipelines.settings import get_settings

    return url or get_settings().store.url.get_secret_value()


@store_app.command("init")
def store_init(url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting).")) -> None:
    """Create the store's tables, or upgrade an older schema; safe to run again."""
    from pipelines.store import Store

    from models.fraud_scorer import SHIPPED_CHECKPOINT
    from pipelines.model_registry import ModelRegistry

    with Store.from_url(_store_url(url)) as store:
        before = store.schema_version()
        after = store.create_schema()
        what = "created" if before == 0 else "upgraded" if after > before else "already current"
        console.print(f"[green]store schema v{after}[/] ({what}) at {store.url}")
        if (SHIPPED_CHECKPOINT / "config.json").is_file():  # an empty registry gets the shipped model as champion
            first = ModelRegistry(store).ensure_champion(SHIPPED_CHECKPOINT, actor="argus store init")
            if first is not None:
                console.print(f"[green]registered[/] {first.version} (shipped checkpoint) as the champion")


@store_app.command("stats")
def store_stats(url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting).")) -> None:
    """Row counts per table (creates or upgrades the schema first, so a fresh store shows zeros)."""
    from rich.table import Table

    from pipelines.store import Store

    with Store.from_url(_store_url(url)) as store:
        version = store.create_schema()
        table = Table(title=f"store schema v{version}", caption=store.url)
        table.add_column("table")
        table.add_column("rows", justify="right")
        for name, n in store.stats().items():
            table.add_row(name, f"{n:,}")
        console.print(table)


# --- alerts (the review loop) --------------------------------------------------------------------

@alerts_app.command("list")
def alerts_list(limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="How many alerts."),
                after: Optional[str] = typer.Option(None, "--after", help="Start after this transaction id (the last one of the previous page)."),
                url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting).")) -> None:
    """The open review queue: alerts without a disposition, highest score first."""
    from rich.table import Table
    from rich.text import Text

    from pipelines.store import Store

    with Store.from_url(_store_url(url)) as store:
        store.create_schema()
        rows = store.open_alerts(limit=limit, after=after)
        if rows is None:
            raise ArgusError(f"no alert {after!r} to start after")
        table = Table(title=f"open alerts ({len(rows)}{'+' if len(rows) == limit else ''})", caption=store.url)
        for name, justify in (("transaction", "left"), ("score", "right"), ("customer", "left"), ("terminal", "left"),
                              ("amount", "right"), ("model", "left"), ("reasons", "left")):
            table.add_column(name, justify=justify, overflow="fold")
        for r in rows:
            reasons = ", ".join(f"{x.get('feature')} ({x.get('weight', 0):+.2f})" for x in (r["reasons"] or [])[:3])
            cells = (r["transaction_id"], f"{r['score']:.3f}", r["customer_id"] or "-", r["terminal_id"] or "-",
                     "-" if r["amount"] is None else f"{r['amount']:,.2f}", r["model_version"], reasons)
            table.add_row(*(Text(c) for c in cells))  # ids are data, never rich markup
        console.print(table)


@alerts_app.command("dispose")
def alerts_dispose(transaction_id: str = typer.Argument(..., help="The alerted transaction."),
                   as_: str = typer.Option(..., "--as", help="fraud | legitimate | unsure."),
                   by: str = typer.Option(..., "--by", help="Who disposes it (the reviewer)."),
                   note: Optional[str] = typer.Option(None, "--note", help="A short note (no control characters)."),
                   url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting)."),
                   bootstrap: Optional[str] = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers (default: config / embedded broker)."),
                   publish: bool = typer.Option(True, "--publish/--no-publish", help="Also produce it to the dispositions topic."),
                   timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds to wait for the broker.")) -> None:
    """Record a disposition of an alert in the store (overwriting an earlier one), then publish it on
    the dispositions topic; a broker that cannot be reached is said in one line, the disposition stays stored."""
    from pipelines.contracts import ContractError
    from pipelines.store import Store

    with Store.from_url(_store_url(url)) as store:
        store.create_schema()
        try:
            record = store.dispose(transaction_id, as_, by, note=note)
        except ContractError as exc:
            raise ArgusError(f"invalid disposition: {exc.reason}") from None
        if record is None:
            raise ArgusError(f"no alert for transaction {transaction_id!r}")
        from rich.markup import escape

        console.print(f"[green]{record.disposition.value}[/] {escape(record.transaction_id)} by "
                      f"{escape(record.disposed_by)} at {record.disposed_at:%Y-%m-%d %H:%M:%S}Z "
                      f"(stored at {escape(store.url)})", highlight=False, soft_wrap=True)
    if not publish:
        return
    from pipelines.alert_review import publish_disposition
    from pipelines.errors import BrokerError

    settings = _kafka_settings(bootstrap)
    try:
        publish_disposition(settings, record, timeout_s=timeout)
    except BrokerError as exc:
        console.print(f"[yellow]not published (stored only):[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return
    console.print(f"[green]published[/] to {escape(settings.topics.dispositions)} (key {escape(record.kafka_key)})",
                  highlight=False, soft_wrap=True)


# --- models (the registry) -----------------------------------------------------------------------

def _who(by: Optional[str]) -> str:
    import getpass

    return by or getpass.getuser()


def _registry_rows_table(versions, title: str, caption: str):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, caption=caption)
    for name in ("version", "status", "parent", "created", "promoted", "AP", "CP@100", "data window", "checkpoint"):
        table.add_column(name, overflow="fold")
    for v in versions:
        m = (v.metrics or {}).get("challenger") or {k: (x.get("argus-moe") if isinstance(x, dict) else x)
                                                   for k, x in (v.metrics or {}).items() if k in ("ap", "cp100")}
        fmt = lambda x: "-" if not isinstance(x, (int, float)) else f"{x:.4f}"  # noqa: E731
        window = v.data_window.get("train") or v.data_window.get("validation") or "-"
        cells = (v.version, v.status, v.parent or "-", f"{v.created_at:%Y-%m-%d %H:%M}",
                 f"{v.promoted_at:%Y-%m-%d %H:%M}" if v.promoted_at else "-", fmt(m.get("ap")), fmt(m.get("cp100")),
                 str(window), v.checkpoint)
        table.add_row(*(Text(c) for c in cells), style="bold green" if v.status == "champion" else None)
    return table


@models_app.command("list")
def models_list(events: int = typer.Option(5, "--events", min=0, max=1000, help="Also show this many audit events."),
                url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting).")) -> None:
    """Registered fraud model versions (the champion in green) and the latest audit events."""
    from rich.table import Table
    from rich.text import Text

    from pipelines.model_registry import ModelRegistry
    from pipelines.store import Store

    with Store.from_url(_store_url(url)) as store:
        store.create_schema()
        registry = ModelRegistry(store)
        versions = registry.list()
        console.print(_registry_rows_table(versions, f"model registry ({len(versions)})", store.url))
        if events:
            table = Table(title="audit events (newest first)")
            for name in ("at", "action", "version", "previous", "by", "detail"):
                table.add_column(name, overflow="fold")
            for e in registry.events(events):
                table.add_row(*(Text(str(x)) for x in (f"{e['at']:%Y-%m-%d %H:%M:%S}Z", e["action"], e["version"],
                                                      e["previous"] or "-", e["actor"], e["detail"] or "")))
            console.print(table)


@models_app.command("promote")
def models_promote(version: str = typer.Argument(..., help="The registered version to serve."),
                   by: Optional[str] = typer.Option(None, "--by", help="Who promotes (default: the OS user)."),
                   url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting).")) -> None:
    """Make VERSION the champion (its checkpoint must load); streams and REST replicas swap to it between batches."""
    from rich.markup import escape

    from pipelines.model_registry import ModelRegistry
    from pipelines.store import Store

    with Store.from_url(_store_url(url)) as store:
        store.create_schema()
        before = ModelRegistry(store).champion()
        v = ModelRegistry(store).promote(version, actor=_who(by))
        console.print(f"[green]champion[/] {escape(v.version)} (was {escape(before.version) if before else 'none'})",
                      highlight=False)


@models_app.command("rollback")
def models_rollback(by: Optional[str] = typer.Option(None, "--by", help="Who rolls back (default: the OS user)."),
                    url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting).")) -> None:
    """Return to the champion the current one replaced (checked to load first)."""
    from rich.markup import escape

    from pipelines.model_registry import ModelRegistry
    from pipelines.store import Store

    with Store.from_url(_store_url(url)) as store:
        store.create_schema()
        before = ModelRegistry(store).champion()
        v = ModelRegistry(store).rollback(actor=_who(by))
        console.print(f"[green]rolled back[/] to {escape(v.version)} (was {escape(before.version)})", highlight=False)


@models_app.command("retrain")
def models_retrain(
    input_path: Path = typer.Option(..., "--input", "-i", help="Labelled transactions known now (handbook-shaped .csv/.csv.gz/.parquet with TX_FRAUD)."),
    window_days: Optional[int] = typer.Option(None, "--window-days", min=1, help="Train days (default: model.retrain_window_days)."),
    eval_days: Optional[int] = typer.Option(None, "--eval-days", min=1, help="Latest days both models are evaluated on (default: model.retrain_eval_days)."),
    gap_days: int = typer.Option(0, "--gap-days", min=0, help="Days between the train window and the evaluation days."),
    preset: str = typer.Option("tiny", "--preset", help="tiny | small."),
    epochs: int = typer.Option(3, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
    tolerance: float = typer.Option(0.0, "--tolerance", min=0.0, help="Promote when AP and CP@100 are >= the champion's minus this."),
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", min=1, help="Train on every fraud of the window and a sample of the rest, this many rows in all."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Promote a challenger that is not worse."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for challenger checkpoints (default: <home>/models)."),
    every_hours: Optional[float] = typer.Option(None, "--every-hours", min=0.001, help="Repeat on this schedule until Ctrl-C (re-reading --input)."),
    url: Optional[str] = typer.Option(None, "--url", help="Store URL (default: store.url setting)."),
) -> None:
    """Train a challenger on the latest labelled window, evaluate it beside the champion on the same latest days, register it, promote it if not worse."""
    import time

    from rich.markup import escape

    from pipelines.retrain import retrain
    from pipelines.settings import get_settings
    from pipelines.store import Store

    settings = get_settings()
    m = settings.model
    while True:
        with Store.from_url(_store_url(url)) as store:
            store.create_schema()
            with console.status("retraining..."):
                r = retrain(store, input_path, output or settings.home / "models",
                            window_days=window_days or m.retrain_window_days, eval_days=eval_days or m.retrain_eval_days,
                            gap_days=gap_days, preset=preset, epochs=epochs, seed=seed, tolerance=tolerance,
                            promote=promote, labels_delay_days=settings.fraud.labels_delay_days,
                            max_train_rows=max_train_rows, log=console.print)
        fmt = lambda d: "-" if not d else f"AP {d['ap'] if d['ap'] is None else round(d['ap'], 4)}, CP@100 {d['cp100']}"  # noqa: E731
        console.print(f"challenger {escape(r.version)}: {fmt(r.metrics['challenger'])}; champion "
                      f"{escape(r.champion or '-')}: {fmt(r.metrics['champion'])} on {r.window['evaluation']}",
                      highlight=False)
        console.print(("[green]promoted[/] " if r.promoted else "[yellow]registered as challenger[/] ")
                      + escape(r.reason) + f" ({r.seconds:.0f} s)", highlight=False)
        if every_hours is None:
            return
        console.print(f"next retrain in {every_hours:g} h (Ctrl-C to stop)")
        time.sleep(every_hours * 3600)


# --- serve / keys (REST scoring endpoint) --------------------------------------------------------

keys_app = typer.Typer(help="API keys for the REST endpoint (stored as sha256 hashes).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command("serve")
def serve_cmd(
    serve_config: Optional[Path] = typer.Option(None, "--config", "--serve-config", help="Serve config YAML (default: serve.config_path, infra/serve.yaml)."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default: the YAML's http_options.host)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: the YAML's http_options.port)."),
    ha_proxy: Optional[bool] = typer.Option(None, "--ha-proxy/--no-ha-proxy", help="HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1; several times faster on small machines). Default: on when the haproxy binary is installed."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs for the local Ray (default: all)."),
) -> None:
    """Start the REST scoring endpoint on a local Ray Serve; prints the URL and blocks until Ctrl-C."""
    import shutil
    import signal
    import time

    from pipelines.settings import get_settings
    from services import local_serve
    from services.local_ray import short_temp_dir

    from pipelines.store import Store

    settings = get_settings()
    config = local_serve.load_config(serve_config or settings.serve.config_path, host=host, port=port)
    # The store the app reads results from gets its schema now (idempotent; the deployments do the
    # same when they start), so a fresh store answers 404 for an unknown id, not an error.
    store_url = config["applications"][0].get("args", {}).get("store_url") or settings.store.url.get_secret_value()
    with Store.from_url(store_url) as store:
        store.create_schema()
    if ha_proxy is None:
        ha_proxy = shutil.which("haproxy") is not None
        if not ha_proxy:
            console.print("[yellow]haproxy not installed: serving through Ray Serve's Python proxy (several times "
                          "slower; `apt-get install haproxy` for the fast ingress)[/]")
    settings.home.mkdir(parents=True, exist_ok=True)
    temp_dir = short_temp_dir()  # not under settings.home: from a deep checkout Ray's socket paths would not fit
    try:
        with console.status("starting Ray Serve (models load in the background)...") as status:
            handle = local_serve.start(config, num_cpus=num_cpus, temp_dir=temp_dir, ha_proxy=ha_proxy,
                                       progress=lambda msg: status.update(msg))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while starting: start() has stopped what it started
        shutil.rmtree(temp_dir, ignore_errors=True)
        console.print("stopped before the endpoint was ready")
        return
    console.print(f"[green]Argus REST endpoint[/] at [bold]{handle.url}[/]  (docs: {handle.url}/docs, "
                  f"readiness: {handle.url}/healthz){'  [HAProxy]' if ha_proxy else ''}")
    console.print("Ctrl-C to stop")

    def _stop(*_):  # SIGTERM (systemd, docker, kill) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        handle.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@keys_app.command("hash")
def keys_hash(key: str = typer.Argument(..., help="The plain API key."),
              scopes: str = typer.Option("fraud:score,reports:summarize,results:read", "--scopes",
                                         help="Comma-separated scopes.")) -> None:
    """Print the config entry (sha256 hash -> scopes) for an existing key."""
    from services.security import check_scopes, hash_key

    entry = {hash_key(key): check_scopes([s.strip() for s in scopes.split(",") if s.strip()])}
    console.print_json(json.dumps(entry))


@keys_app.command("new")
def keys_new(scopes: str = typer.Option("fraud:score,reports:summarize,results:read", "--scopes",
                                        help="Comma-separated scopes: fraud:score, reports:summarize, results:read.")) -> None:
    """Create a random key; print it once (give it to the client) and the hash entry for the config."""
    from services.security import check_scopes, hash_key, new_key

    chosen = check_scopes([s.strip() for s in scopes.split(",") if s.strip()])
    key = new_key()
    console.print(f"API key (shown once, store it in the client's secret store): [bold]{key}[/]")
    console.print("Add to serve.api_key_hashes (settings YAML) or api_key_hashes in infra/serve.yaml:")
    console.print_json(json.dumps({hash_key(key): chosen}))


# --- summarise (batch job) and the report stream ---------------------------------------------------

@app.command("summarize")
def summarize_cmd(
    input_path: Path = typer.Option(..., "--input", "-i", help="A folder of .txt/.md, .jsonl(.gz), .parquet or .csv."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Results file: .parquet or .jsonl."),
    store: bool = typer.Option(False, "--store/--no-store", help="Also write summaries + dead letters to the store."),
    store_url: Optional[str] = typer.Option(None, "--store-url", help="Store URL (default: store.url; implies --store)."),
    domain: Optional[str] = typer.Option(None, "--domain", help="finance | medical, for records that name none."),
    mode: Optional[str] = typer.Option(None, "--mode", help="extractive | generative (default: summariser.mode)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Process at most this many (not yet done) records."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Summariser checkpoint directory (default: shipped)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs for a local Ray (default: all)."),
) -> None:
    """Summarise a batch of reports on Ray: resumable, validated, with source spans per sentence and key fact."""
    from rich.table import Table

    from pipelines.report_batch import run_batch
    from pipelines.settings import get_settings
    from services.summarize_actor import start_pool

    url = store_url or (_store_url(None) if store else None)
    result = run_batch(input_path, output, store_url=url, domain=domain, mode=mode, limit=limit, checkpoint=checkpoint,
                       settings=get_settings(), ray_num_cpus=num_cpus, show_progress=True, pool_factory=start_pool)
    table = Table(title=f"summarised {input_path}", show_header=False)
    for key, value in [("model version", result.model_version), ("records in input", result.total),
                       ("skipped (already done)", result.skipped), ("summarised", result.summarised),
                       ("failed", result.failed), ("failures by stage", json.dumps(result.errors_by_stage) or "-"),
                       ("time", f"{result.seconds:.1f} s"), ("docs/s", f"{result.docs_per_s:.3f}"),
                       ("output", f"{result.output} ({result.output_rows} rows)" if result.output else "-"),
                       ("store", f"{result.stored} summaries, {result.dead_letters} dead letters" if url else "-")]:
        table.add_row(key, str(value))
    console.print(table)


@stream_app.command("reports")
def stream_reports_cmd(
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers (default: config / embedded broker)."),
    store_url: Optional[str] = typer.Option(None, "--store-url", help="Store URL (default: store.url setting)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this long (default: run until Ctrl-C)."),
    idle_exit: Optional[float] = typer.Option(None, "--idle-exit", help="Stop after this many seconds with nothing left to read."),
    mode: Optional[str] = typer.Option(None, "--mode", help="extractive | generative (default: summariser.mode)."),
    group: Optional[str] = typer.Option(None, "--group", help="Consumer group (default: <kafka.consumer_group>.reports)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Summariser checkpoint directory (default: shipped)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs for a local Ray (default: all)."),
) -> None:
    """Summarise the reports topic into the store (offsets committed after each store write; bad records dead-lettered)."""
    from pipelines.kafka_io import wait_for_broker
    from services.report_stream_runner import run_report_stream

    settings = _kafka_settings(bootstrap)
    wait_for_broker(settings.kafka.bootstrap_servers, 10.0)
    url = _store_url(store_url)
    console.print(f"consuming [bold]{settings.topics.reports}[/] at {settings.kafka.bootstrap_servers} -> store; Ctrl-C to stop")
    counts = run_report_stream(settings, url, seconds=seconds, idle_exit_s=idle_exit, checkpoint=checkpoint, mode=mode,
                               group=group, ray_num_cpus=num_cpus,
                               on_batch=lambda job: console.print(f"  batch {job.counts.batches}: {job.counts.summarised} summarised, "
                                                                  f"{job.counts.dead_letters} dead letters"))
    console.print(f"[green]stopped[/]: {counts.as_dict()}")


# --- fraud scorer: training ----------------------------------------------------------------------------

@train_app.command("fraud")
def train_fraud_cmd(
    input_path: Path = typer.Option(..., "--input", "-i", help="Handbook-shaped transactions (.csv, .csv.gz or .parquet)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny | small (the fraud model's shape)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoint directory (default: var/checkpoints/fraud-<preset>)."),
    epochs: int = typer.Option(3, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="Use only the first N rows (in file order)."),
    batch_size: int = typer.Option(1024, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also fit the LightGBM handbook baseline."),
    review_per_day: int = typer.Option(0, "--review-per-day", min=0,
                                       help="Simulated investigators: the top K cards a day (by --ranker) get their "
                                            "true labels; the model reads their verdicts (0: off)."),
    review_latency: str = typer.Option("1h", "--review-latency", help="Verdicts this long after the day's end."),
    ranker: Optional[Path] = typer.Option(None, "--ranker", help="Checkpoint ranking the cards (default: shipped)."),
    spend: bool = typer.Option(False, "--spend/--no-spend",
                               help="Also read each customer's usual amount (30-day median, unusual amounts)."),
) -> None:
    """Train the MoE fraud scorer (streaming-safe features, time split with a label-delay gap) next to LightGBM."""
    from rich.table import Table

    from models.train_fraud import TrainConfig, TrainDataError, run
    from pipelines.errors import ModelError
    from pipelines.settings import get_settings

    settings = get_settings()
    out = output or settings.home / "checkpoints" / f"fraud-{preset}"
    cfg = TrainConfig(preset=preset, epochs=epochs, seed=seed, max_rows=max_rows, batch_size=batch_size, device=device,
                      baseline=baseline, labels_delay_days=settings.fraud.labels_delay_days,
                      review_per_day=review_per_day, review_latency_s=_duration_s(review_latency, "--review-latency"),
                      ranker=None if ranker is None else str(ranker), overrides={"spend": True} if spend else {})
    try:
        result = run(input_path, out, cfg, progress=True, log=console.print)
    except TrainDataError as exc:
        raise ModelError(str(exc)) from None
    table = Table(title=f"validation {result['split']['validation']} (train {result['split']['train']})")
    for col in ("model", "AP", "AUC-ROC", "CP@100", "fit s"):
        table.add_column(col)
    for name, m in result["metrics"].items():
        table.add_row(name, f"{m['ap']:.4f}", f"{m['auc']:.4f}", f"{m['cp100']:.4f}", f"{m.get('fit_s', 0):.1f}")
    console.print(table)
    console.print(f"[green]saved[/] {result['model_version']} ({result['parameters']:,} parameters) to {result['output']}")


# --- summariser: tokenizer, training, evaluation -----------------------------------------------------

@train_app.command("tokenizer")
def train_tokenizer_cmd(
    inputs: list[Path] = typer.Option(..., "--input", "-i", help="JSONL(.gz) files with document/summary/text fields (repeatable)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for tokenizer.json (e.g. beside the checkpoints)."),
    vocab_size: int = typer.Option(8192, "--vocab-size", min=300, help="BPE vocabulary size, special tokens included."),
) -> None:
    """Train the byte-level BPE tokenizer (special tokens + prompt markers) on report text."""
    from models.tokenizer import load_tokenizer, train_tokenizer_files

    path = train_tokenizer_files(inputs, output, vocab_size=vocab_size)
    console.print(f"[green]tokenizer[/] {path} ({len(load_tokenizer(path))} tokens)")


@train_app.command("summariser")
def train_summariser_cmd(
    preset: str = typer.Option("tiny", "--preset", help="tiny | small | lite (models/presets.py)."),
    inputs: list[Path] = typer.Option(..., "--input", "-i", help="JSONL(.gz) with document + summary (repeatable)."),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="Held-out JSONL(.gz) for the model card (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoint directory (default: <home>/checkpoints/summariser-<preset>)."),
    epochs: int = typer.Option(1, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", min=1, help="Train on at most this many documents."),
    max_len: Optional[int] = typer.Option(None, "--max-len", min=64, help="Training sequence length (default: 16384 GPU, 1024 CPU)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop training after this long (then evaluate, save)."),
    eval_docs: int = typer.Option(200, "--eval-docs", min=0, help="Held-out documents per source for the model card."),
    gen_eval_docs: int = typer.Option(0, "--gen-eval-docs", min=0, help="Held-out documents per source for generative ROUGE."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", min=300, help="Tokenizer vocabulary (default: the preset's)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="tokenizer.json to use (default: train one on the inputs)."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", min=64, help="Padded tokens per batch (default: 131072 GPU, 4096 CPU)."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak AdamW learning rate (warm-up, then cosine to 10%)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
) -> None:
    """Train the summariser (extractive sentence scorer + causal LM on one MoE backbone) and write a checkpoint."""
    from models.train_summariser import train_summariser
    from pipelines.eval_summaries import heldout_metrics
    from pipelines.sentences import split_sentences
    from pipelines.settings import get_settings

    out = output or (get_settings().home / "checkpoints" / f"summariser-{preset}")
    meta = train_summariser(inputs, out, preset=preset, val=val, epochs=epochs, seed=seed, max_docs=max_docs, max_len=max_len,
                            max_minutes=max_minutes, eval_docs=eval_docs or None, gen_eval_docs=gen_eval_docs,
                            vocab_size=vocab_size, batch_tokens=batch_tokens, lr=lr, device=device, tokenizer_path=tokenizer,
                            command="argus " + " ".join(sys.argv[1:]),
                            sentences_of=lambda text: [s.text for s in split_sentences(text)],
                            evaluate=lambda model, held: heldout_metrics(model, held, eval_docs or None, gen_eval_docs))
    console.print(f"[green]saved[/] {out} ({meta['model_version']}, {meta['steps']} steps, {meta['train_seconds']} s)")
    for source, rows in (meta.get("metrics") or {}).items():
        if isinstance(rows, list):
            _print_rouge_table(rows, f"held-out {source}")


@train_app.command("writers")
def train_writers_cmd(
    iu_xray: Optional[Path] = typer.Option(None, "--iu-xray", help="IU X-ray findings/impression JSONL(.gz) (10% id-hash slice held out)."),
    ectsum: Optional[Path] = typer.Option(None, "--ectsum", help="ECTSum train JSONL(.gz) (finance selector + budget)."),
    pubmed: Optional[Path] = typer.Option(None, "--pubmed", help="PubMed sample JSONL(.gz) (25% id-hash slice held out)."),
    output: Path = typer.Option(Path("models/checkpoints/summary-writers"), "--output", "-o", help="Folder for the fitted files."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fit the impression writer, the oracle-trained sentence selectors and the length budgets."""
    from models.fit_writers import fit_writers

    meta = fit_writers(output, iu_xray=iu_xray, ectsum=ectsum, pubmed=pubmed, seed=seed,
                       command="argus " + " ".join(sys.argv[1:]))
    console.print(f"[green]saved[/] {output} ({meta['version']}): {json.dumps(meta['parts'], default=str)[:800]}")


def _print_rouge_table(rows: list[dict], title: str) -> None:
    from rich.table import Table

    cols = ["system", "docs", "rouge1", "rouge2", "rougeL", "rougeLsum", "figures_in_source"]
    cols += [c for c in ("errors", "false_normal_rate", "false_normal_vs_findings", "obs_precision", "obs_recall", "obs_f1")
             if any(c in r for r in rows)]
    table = Table(title=title)
    for col in cols:
        table.add_column(col, justify="left" if col == "system" else "right")
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    console.print(table)


@eval_app.command("summaries")
def eval_summaries_cmd(
    inputs: list[Path] = typer.Option(..., "--input", "-i", help="JSONL(.gz) with document + reference 'summary' (repeatable)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report (table + chart) here."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N records only."),
    mode: str = typer.Option("extractive", "--mode", help="extractive | generative."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Summariser checkpoint (default: shipped)."),
    max_sentences: Optional[int] = typer.Option(None, "--max-sentences", min=1, help="Cap (default: the fitted budget)."),
    max_chars: Optional[int] = typer.Option(None, "--max-chars", min=1, help="Cap (default: the fitted budget)."),
    predictions: Optional[list[Path]] = typer.Option(None, "--predictions", "-p",
                                                     help="Score the rows `argus summarize` wrote (.jsonl/.parquet) "
                                                          "instead of running the summariser here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table rows as JSON here."),
) -> None:
    """ROUGE-1/2/L/Lsum and figure support of the summariser next to LEAD-3 and TextRank; on chest
    radiographs also the false-normal rate and observation P/R/F1 (CheXpert-style labels)."""
    from pipelines.eval_summaries import run_eval

    rows = run_eval(inputs, limit=limit, mode=mode, checkpoint=checkpoint, max_sentences=max_sentences,
                    max_chars=max_chars, report=report, predictions=predictions)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=1, default=str))
    _print_rouge_table(rows, f"summaries: {', '.join(p.name for p in inputs)}" + (f" (first {limit})" if limit else ""))
    console.print(f"model: {rows[0].get('model_version', '-')}")
    if report:
        console.print(f"report: {report}")


@eval_app.command("fraud")
def eval_fraud_cmd(
    scores: Path = typer.Option(..., "--scores", "-s", help="Scores Parquet (what `argus fraud replay` writes)."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML report to write (one self-contained file)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels: the handbook CSV(.gz)/Parquet (TX_FRAUD "
                                          "[, TX_FRAUD_SCENARIO]) or a Parquet with transaction_id, label. "
                                          "Default: the scores file's own label column."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Another model's scores Parquet, shown beside."),
    start: Optional[str] = typer.Option(None, "--start", help="Evaluate from this date (UTC, inclusive)."),
    end: Optional[str] = typer.Option(None, "--end", help="Evaluate until this date (UTC, exclusive)."),
) -> None:
    """A fraud evaluation report: PR curve, precision/recall at the review and alert thresholds,
    calibration, recall per fraud kind at 1% flagged, Card Precision@100 per day (beside a baseline)."""
    from rich.markup import escape
    from rich.table import Table

    from pipelines.fraud_report import build_report, format_metric, write_report
    from pipelines.settings import get_settings

    fraud = get_settings().fraud
    report = build_report(scores, labels, baseline, start=start, end=end, review_threshold=fraud.review_threshold,
                          alert_threshold=fraud.alert_threshold)
    heads = report.headlines()
    table = Table(title=f"fraud evaluation {report.window[0]} .. {report.window[1]}")
    table.add_column("metric")
    for h in heads:
        table.add_column(escape(h["model"]), justify="right")  # names come from the files: text, not markup
    for key in heads[0]:
        if key != "model":
            table.add_row(key, *(format_metric(h[key], 4) for h in heads))
    console.print(table)
    if report.dropped:
        console.print(f"[yellow]{report.dropped:,} transaction(s) the baseline did not score were left out[/]")
    console.print(f"report: {escape(str(write_report(report, out)))}")


# --- fraud stream and replay --------------------------------------------------------------------

@stream_app.command("fraud")
def stream_fraud_cmd(
    consumers: int = typer.Option(1, "--consumers", min=1, help="Consumer actors in the group (capped at the partition count)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1, help="Micro-batch size bound (default: fraud.batch_max_size)."),
    max_wait_ms: Optional[int] = typer.Option(None, "--max-wait-ms", min=0, help="Micro-batch time bound (default: fraud.batch_max_wait_ms)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", min=0.0, help="Stop after this long (default: run until Ctrl-C)."),
    idle_exit: Optional[float] = typer.Option(None, "--idle-exit", min=0.0, help="Stop once idle with no lag for this long."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", help="Kafka bootstrap (default: running embedded broker, else config)."),
    store_url: Optional[str] = typer.Option(None, "--store-url", help="Store URL (default: store.url setting)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Fraud checkpoint dir (default: shipped)."),
    group: Optional[str] = typer.Option(None, "--group", help="Consumer group (default: <kafka.consumer_group>-fraud)."),
    metrics_port: int = typer.Option(9464, "--metrics-port", help="Prometheus port of consumer 0 (consumer i: +i; 0 = off)."),
    validation: str = typer.Option("fast", "--validation", help="fast | gx (great-expectations suite per batch)."),
    actor_cpus: float = typer.Option(1.0, "--actor-cpus", min=0.0, help="Ray CPUs reserved per consumer actor."),
) -> None:
    """Score the transactions topic on Ray: decode, validate, state + MoE scorer, store, alerts."""
    from services.fraud_stream_actor import run_stream

    settings = _kafka_settings(bootstrap)
    url = _store_url(store_url)
    console.print(f"fraud stream: {consumers} consumer(s) on {settings.topics.transactions} at "
                  f"{settings.kafka.bootstrap_servers}" + (f", metrics on :{metrics_port}+i" if metrics_port else ""))
    results = run_stream(settings, url, consumers=consumers, seconds=seconds, idle_exit_s=idle_exit,
                         checkpoint=str(checkpoint) if checkpoint else None, metrics_port=metrics_port or None,
                         num_cpus=actor_cpus, max_batch=max_batch, max_wait_ms=max_wait_ms, group=group, validation_engine=validation)
    from rich.table import Table

    table = Table(title="fraud stream")
    keys = ["consumed", "scored", "dead_letters", "duplicates", "alerts", "labels", "batches", "store_retries",
            "fenced", "restarts"]
    table.add_column("consumer")
    for k in keys:
        table.add_column(k, justify="right")
    for i, r in enumerate(results):
        table.add_row(f"fraud-{i}", *(str(r.get(k, 0)) for k in keys))
    console.print(table)


@fraud_app.command("replay")
def fraud_replay_cmd(
    input_path: Path = typer.Option(..., "--input", "-i", help="Handbook .csv/.csv.gz or a .parquet of transactions."),
    output: Path = typer.Option(..., "--output", "-o", help="Scores Parquet to write."),
    labels_delay_days: Optional[float] = typer.Option(None, "--labels-delay-days", help="Label visibility delay (default: the model's)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="First N transactions (in time order)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Fraud checkpoint dir (default: shipped)."),
    eval_start: Optional[str] = typer.Option(None, "--eval-start", help="AP/AUC window start date (default: last 28 days)."),
    eval_end: Optional[str] = typer.Option(None, "--eval-end", help="AP/AUC window end date, exclusive."),
    review_per_day: int = typer.Option(100, "--review-per-day", min=0,
                                       help="Simulated investigators: the top K cards a day get their true labels "
                                            "(0: none; needs a labelled file)."),
    review_latency: str = typer.Option("1h", "--review-latency",
                                       help="Verdicts this long after the day's end (e.g. 1h, 30m, 90s)."),
) -> None:
    """Score a whole file in time order through the stream's state + scorer (no broker)."""
    from pipelines.fraud_replay import replay

    latency_s = _duration_s(review_latency, "--review-latency")
    r = replay(input_path, output, checkpoint=checkpoint, labels_delay_days=labels_delay_days, limit=limit,
               eval_start=eval_start, eval_end=eval_end, review_per_day=review_per_day, review_latency_s=latency_s)
    console.print(f"[green]scored[/] {r.rows:,} transactions in {r.seconds:.1f}s ({r.tx_per_s:,.0f} tx/s) "
                  f"with {r.model_version} -> {r.output}")
    if review_per_day and r.metrics:
        console.print(f"simulated investigators: top {review_per_day} cards a day, {r.dispositions:,} verdicts "
                      f"{review_latency} after each day's end")
    if r.metrics:
        m = r.metrics

        def fmt(v):
            return "n/a" if v is None else f"{v:.4f}"

        console.print(f"window {m['window'][0]} .. {m['window'][1]}: {m['rows']:,} rows, {m['frauds']:,} frauds, "
                      f"AP {fmt(m['ap'])}, AUC {fmt(m['auc'])}, CP@100 {fmt(m['cp100'])}")


def _duration_s(text: str, option: str) -> float:
    """Seconds of '1h' / '30m' / '90s' / '2d' / a bare number of seconds; a clear error otherwise."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration like 1h, 30m or 90s", param_hint=option)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# --- demo -----------------------------------------------------------------------------------------

@app.command("demo")
def demo_cmd(
    transactions: int = typer.Option(20_000, "--transactions", min=1, help="Simulated transactions to stream."),
    rate: float = typer.Option(5_000.0, "--rate", min=1.0, help="Produce rate (tx/s)."),
    reports: int = typer.Option(4, "--reports", min=0, help="Simulated reports to summarise."),
    seed: int = typer.Option(7, "--seed"),
) -> None:
    """Broker + local Ray + the MoE models + a SQLite store on this machine, end to end."""
    from services.demo import print_demo, run_demo

    print_demo(run_demo(transactions=transactions, rate=rate, reports=reports, seed=seed, console=console), console)
