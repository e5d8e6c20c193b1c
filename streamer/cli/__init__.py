"""The ``streamer`` command line: one program, a subcommand per job."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from streamer.cli import api, dev, ops, publish
from streamer.cli._common import TidyGroup
from streamer.jobs import JOBS

__all__ = ["app", "main"]

app = typer.Typer(
    name="streamer",
    help="Keeps product image galleries in sync at catalog scale, on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=TidyGroup,
)


@app.callback()
def _options(
    arm_test_crash_points: Annotated[
        bool,
        typer.Option(
            "--arm-test-crash-points",
            hidden=True,
            help="Test harnesses only: arm STREAMER_TEST_CRASH_POINTS (workers SIGKILL themselves)",
        ),
    ] = False,
) -> None:
    """Keeps product image galleries in sync at catalog scale, on Kafka."""
    if arm_test_crash_points:
        from streamer.cli._common import err_console
        from streamer.runtime import faults

        try:
            faults.arm_from_env()
        except ValueError as exc:
            err_console.print(f"[red]error:[/red] STREAMER_TEST_CRASH_POINTS: {exc}")
            raise typer.Exit(2) from exc


def _register_jobs() -> None:
    """Each job's commands, as its descriptor (``streamer.jobs``) names them."""
    for job in JOBS:
        if job.cli is not None:
            module, _, attribute = job.cli.partition(":")
            getattr(importlib.import_module(module), attribute)(app)


# The jobs first, then the faces and the tooling, one line each.
_register_jobs()
app.command("publish")(publish.publish)
app.command("serve")(api.serve)
app.add_typer(ops.dlq_app, name="dlq")
app.command("status")(ops.status)
app.add_typer(ops.topics_app, name="topics")
app.add_typer(ops.db_app, name="db")
app.add_typer(dev.app, name="dev")
app.command("demo")(dev.demo)
app.command("loadgen")(dev.loadgen)
app.command("bench")(dev.bench)


def main() -> None:
    app()
