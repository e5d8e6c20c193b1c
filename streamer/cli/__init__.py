"""The ``streamer`` command line: one program, a subcommand per job."""

from __future__ import annotations

from typing import Annotated

import typer

from streamer.cli import api, dev, forward, gallery, objects, ops, publish, replicate
from streamer.cli._common import TidyGroup

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


# Each subcommand module registers itself here, one line each: the product first, then tooling.
app.command("consume")(gallery.consume)
app.command("publish")(publish.publish)
app.command("serve")(api.serve)
app.add_typer(gallery.gallery_app, name="gallery")
app.add_typer(forward.forward_app, name="forward")
app.add_typer(replicate.replicate_app, name="replicate")
app.add_typer(objects.objects_app, name="objects")
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
