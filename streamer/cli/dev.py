"""``streamer dev up | down | status``: the embedded development stack."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from streamer.devstack import DevStack, StackError, database_url_from_env

app = typer.Typer(
    help="The embedded development stack (Kafka broker, PostgreSQL, S3 server).",
    no_args_is_help=True,
)
_err = Console(stderr=True)


def home_dir() -> Path:
    return Path(os.environ.get("STREAMER_HOME", ".streamer"))


def _stack() -> DevStack:
    return DevStack(home_dir(), database_url=database_url_from_env())


@app.command()
def up() -> None:
    """Start the stack (idempotent) and print its settings as export lines."""
    dev = _stack()
    try:
        state = dev.up()
    except StackError as exc:
        _err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for component in state.components.values():
        origin = "started" if component.owned else "external"
        _err.print(f"[green]✓[/green] {component.name:<9} {component.url}  ({origin})")
    _err.print(f"settings written to {dev.env_file} (read by every streamer command run from here)")
    for key, value in state.env().items():
        print(f"export {key}={value}")


@app.command()
def down() -> None:
    """Stop what `dev up` started, and nothing else."""
    stopped = _stack().down()
    _err.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status() -> None:
    """Show whether each part of the stack answers."""
    dev = _stack()
    state = dev.load()
    if state is None:
        _err.print("the development stack is not running (start it with `streamer dev up`)")
        raise typer.Exit(1)
    health = dev.status()
    table = Table("component", "url", "owned", "healthy")
    for name, component in state.components.items():
        table.add_row(name, component.url, str(component.owned), "yes" if health[name] else "NO")
    Console().print(table)
    if not all(health.values()):
        raise typer.Exit(1)
