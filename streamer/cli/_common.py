"""What every subcommand shares: settings from flags + environment + dev.env, and clean errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from streamer.config import Settings, load_settings
from streamer.errors import StreamerError

__all__ = ["err_console", "fail_cleanly", "settings_from"]

# Errors are one unwrapped line, so scripts and log search can match them whole.
err_console = Console(stderr=True, soft_wrap=True)


def settings_from(**overrides: Any) -> Settings:
    """Load settings or exit with the message naming the bad setting."""
    try:
        settings = load_settings(**overrides)
    except StreamerError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn streamer errors into one red line and a non-zero exit instead of a traceback."""
    try:
        yield
    except StreamerError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
