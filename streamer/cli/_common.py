"""What every subcommand shares: settings from flags + environment + dev.env, and clean errors."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from streamer.errors import StreamerError
from streamer.runtime.logs import configure_logging
from streamer.settings import Settings, load_settings

__all__ = ["err_console", "fail_cleanly", "run", "settings_from"]

T = TypeVar("T")

# Errors are one unwrapped line, so scripts and log search can match them whole.
err_console = Console(stderr=True, soft_wrap=True)


def settings_from(**overrides: Any) -> Settings:
    """Load settings or exit with the message naming the bad setting."""
    try:
        settings = load_settings(**overrides)
    except StreamerError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    configure_logging(settings.runtime.log_level, settings.runtime.log_format)
    return settings


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn streamer errors into one red line and a non-zero exit instead of a traceback."""
    try:
        yield
    except StreamerError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop (the workers' loop) when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
