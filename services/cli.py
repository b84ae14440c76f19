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
for sub, name in [(infra_app, "infra"), (config_app, "config"), (simulate_app, "simulate"), (train_app, "train"),
                  (stream_app, "stream"), (fraud_app, "fraud"), (eval_app, "eval")]:
    app.add_typer(sub, name=name)


def main() -> None:
    """Entry point that turns ArgusError into one clear line and a non-zero exit."""
    try:
        app()
    except ArgusError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
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
