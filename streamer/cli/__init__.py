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


def main() -> None:
    app()
