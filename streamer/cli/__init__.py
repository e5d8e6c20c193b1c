"""The ``streamer`` command line: one program, a subcommand per job."""

from __future__ import annotations

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="streamer",
    help="Keeps product image galleries in sync at catalog scale, on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Subcommand modules register themselves here, one line each.
from streamer.cli import dev as _dev  # noqa: E402

app.add_typer(_dev.app, name="dev")
from streamer.cli import core as _core  # noqa: E402

app.command("consume")(_core.consume)
app.add_typer(_core.db_app, name="db")
app.add_typer(_core.gallery_app, name="gallery")
app.command("demo")(_core.demo)
app.command("bench")(_core.bench)
app.command("loadgen")(_core.loadgen)
from streamer.cli import kafka as _kafka  # noqa: E402

app.add_typer(_kafka.topics_app, name="topics")
app.command("publish")(_kafka.publish)
from streamer.cli import ops as _ops  # noqa: E402

app.add_typer(_ops.dlq_app, name="dlq")
app.command("status")(_ops.status)


def main() -> None:
    app()
