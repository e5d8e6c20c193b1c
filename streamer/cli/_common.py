"""What every subcommand shares: settings from flags + environment + dev.env, clean errors,
a word on what a command waits for, and help text fit for a terminal."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from streamer.config import Section, default_env_file
from streamer.errors import StreamerError
from streamer.runtime.job import Job
from streamer.runtime.logs import configure_logging
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
from streamer.settings import Settings, load_settings, unknown_variables

__all__ = [
    "TidyGroup",
    "err_console",
    "fail_cleanly",
    "note",
    "out_console",
    "run",
    "run_job",
    "settings_from",
    "settings_origin",
    "tidy_help",
    "traced",
    "waiting",
]

T = TypeVar("T")
# What the product's log lines carry beside the runtime's fields (README: STREAMER_LOG_FORMAT).
LOG_FIELDS = ("sku",)
log = logging.getLogger("streamer.cli")

# Errors are one unwrapped line, so scripts and log search can match them whole.
err_console = Console(stderr=True, soft_wrap=True)
# Tables and reports: on stdout, headers and all, so `| less` and `> file` get everything.
out_console = Console()

_json_logs = False
_origin_shown = False  # the settings' origin was said already


def settings_origin() -> str:
    """Where the settings of this command come from, and what was not found."""
    env_file = default_env_file()
    variables = _variables()
    parts = []
    if env_file.exists():
        parts.append(f"{env_file.resolve()} (written by `streamer dev up`)")
    else:
        where = Path(env_file).resolve()
        parts.append(
            f"no {where} (run commands from the checkout where `streamer dev up` ran, or set "
            "STREAMER_HOME)"
        )
    if variables:
        shown = ", ".join(variables[:4]) + (
            f" and {len(variables) - 4} more" if len(variables) > 4 else ""
        )
        parts.append(f"environment: {shown}")
    else:
        parts.append("no STREAMER_* variables")
    if not env_file.exists() and not variables:
        parts.append("so every setting is its default (README, Configuration)")
    return "; ".join(parts)


def settings_from(*, require: tuple[type[Section], ...] = (), **overrides: Any) -> Settings:
    """Load settings or exit with the message naming the bad setting.

    The runtime's sections (Kafka, PostgreSQL, the runtime) and ``require`` are validated
    now; others only if the command reads them. A ``STREAMER_*`` variable that is no
    setting is reported either way."""
    global _json_logs
    try:
        settings = load_settings(**overrides)
        settings.require(KafkaSettings, DatabaseSettings, RuntimeSettings, *require)
    except (StreamerError, TypeError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    configure_logging(settings.runtime.log_level, settings.runtime.log_format, fields=LOG_FIELDS)
    for name in unknown_variables(default_env_file()):
        log.warning("%s is not a setting streamer knows; it is ignored", name)
    _json_logs = settings.runtime.log_format == "json"
    global _origin_shown
    if not default_env_file().exists() and not _variables():
        note(f"no settings found, using the defaults: {settings_origin()}")
        _origin_shown = True
    return settings


def run_job(job: Job, **overrides: Any) -> None:
    """``streamer <job>``: one worker of the job, until SIGTERM/SIGINT."""
    from streamer.ops.retention import RetentionSettings, pruning

    settings = settings_from(require=(*job.sections, RetentionSettings), **overrides)
    assert job.runner is not None, f"{job.name} runs no worker"
    with fail_cleanly():
        stats = run(job.runner(settings, pruning=pruning(settings.retention)).run())
    err_console.print(f"stopped after {stats.batches} batches, {stats.messages} messages")


def _variables() -> list[str]:
    return sorted(k for k in os.environ if k.startswith("STREAMER_") and k != "STREAMER_HOME")


def note(text: str) -> None:
    """A line for the person running the command (stderr), or a log line in JSON mode."""
    if _json_logs:
        log.info(text)
    else:
        err_console.print(f"[dim]{escape(text)}[/dim]", highlight=False)


@contextmanager
def waiting(what: str) -> Iterator[None]:
    """Say what a command waits for while it waits: a spinner on a terminal, one line in a log."""
    if _json_logs or not err_console.is_terminal:
        note(f"{what}…")
        yield
        return
    with err_console.status(escape(what) + "…"):
        yield


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn streamer errors into one red line and a non-zero exit instead of a traceback; the
    line says where the settings came from, since a wrong or missing one is the usual cause."""
    try:
        yield
    except StreamerError as exc:
        if _json_logs:
            log.error("%s", exc, extra={"reason": exc.reason})
            if not _origin_shown:
                log.error("settings: %s", settings_origin())
        else:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}")
            if not _origin_shown:
                err_console.print(f"[dim]settings: {escape(settings_origin())}[/dim]")
        raise typer.Exit(1) from exc


@contextmanager
def traced(service: str) -> Iterator[None]:
    """Tracing for this command while the ``OTEL_*`` variables ask for it (a bad value is
    refused with its name before anything runs); what it recorded is exported at the end."""
    from streamer.runtime import tracing

    with fail_cleanly():
        owned = tracing.configure(service)
    try:
        yield
    finally:
        if owned:
            tracing.shutdown()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop (the workers' loop) when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def tidy_help(command: Any) -> None:
    """Metavars a person reads in ``--help``: none on a flag (``--json``, not ``--json <bool>``),
    the value's kind in capitals on the others (``--limit INTEGER``), as click writes them."""
    ctx_class = getattr(command, "context_class", None)
    ctx = ctx_class(command) if ctx_class is not None else None
    helper = command.get_help_option(ctx) if ctx is not None else None
    for param in (*getattr(command, "params", ()), *([helper] if helper is not None else [])):
        if param.metavar is not None:
            continue
        if param.param_type_name == "argument":
            # its name says what it is; the type (``<path>``, ``<str>``) only adds noise
            param.display_type_rich = lambda ctx: None
            continue
        if param.param_type_name != "option":
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
        else:
            name = param.bare_type() if hasattr(param, "bare_type") else "value"
            param.metavar = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER"}.get(
                name, name.upper()
            )
    if hasattr(command, "list_commands") and ctx is not None:
        for name in command.list_commands(ctx):
            tidy_help(command.get_command(ctx, name))


class TidyGroup(TyperGroup):
    """The root command: tidies every command's help before any argument is read."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        tidy_help(self)
        return super().make_context(info_name, args, parent=parent, **extra)
