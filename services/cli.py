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
