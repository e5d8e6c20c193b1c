"""`--help` made for a terminal: every option and argument explained, no `<str>`/`<bool>`
metavars (a flag that shows `<bool>` looks like it takes a value), 80 columns."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from streamer.cli import app
from streamer.cli._common import tidy_help

pytestmark = pytest.mark.unit


def commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            found += commands(command.get_command(ctx, name), (*path, name))
    return found


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"streamer {' '.join(path)} {param.opts or param.name}"
        for path, command in commands(typer.main.get_command(app))
        for param in getattr(command, "params", ())
        if not getattr(param, "help", None)
    ]
    assert missing == []


def test_help_fits_80_columns_without_type_metavars() -> None:
    root = typer.main.get_command(app)
    tidy_help(root)
    runner = CliRunner()
    for path, _ in commands(root):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
        assert result.exit_code == 0, (path, result.output)
        for bad in ("<str>", "<bool>", "<int>", "<float>", "<path>"):
            assert bad not in result.output, (path, result.output)
        assert max(len(line) for line in result.output.splitlines()) <= 80, path
