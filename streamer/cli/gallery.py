"""``streamer consume`` and ``streamer gallery show|export``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from streamer.cli._common import (
    err_console,
    fail_cleanly,
    out_console,
    run,
    run_job,
    settings_from,
)
from streamer.gallery.job import JOB

__all__ = ["consume", "gallery_app", "register"]

gallery_app = typer.Typer(help="Read stored galleries.", no_args_is_help=True)


def consume(
    group_id: Annotated[str | None, typer.Option("--group-id", help="Consumer group")] = None,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="0 disables")] = None,
    batch_max_events: Annotated[
        int | None,
        typer.Option("--batch-max-events", help="events per batch (STREAMER_BATCH_MAX_EVENTS)"),
    ] = None,
    batch_max_wait_ms: Annotated[
        int | None,
        typer.Option(
            "--batch-max-wait-ms", help="wait for a fuller batch (STREAMER_BATCH_MAX_WAIT_MS)"
        ),
    ] = None,
) -> None:
    """Run a gallery consumer-group worker until SIGTERM/SIGINT (the batch in hand is finished first)."""
    run_job(
        JOB,
        group_id=group_id,
        kafka_bootstrap=bootstrap,
        metrics_port=metrics_port,
        batch_max_events=batch_max_events,
        batch_max_wait_ms=batch_max_wait_ms,
    )


def register(app: typer.Typer) -> None:
    app.command("consume")(consume)
    app.add_typer(gallery_app, name="gallery")


@gallery_app.command("show")
def show(
    sku: Annotated[str, typer.Argument(help="the SKU whose stored gallery to show")],
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="same as --format json")] = False,
) -> None:
    """Show one SKU's stored gallery: every image with its full path and ETag (long values
    wrap at the terminal's width instead of being cut)."""
    from streamer.gallery.export import load_gallery

    settings = settings_from(require=JOB.sections)
    with fail_cleanly():
        gallery = run(load_gallery(settings.database.dsn, sku))
    if gallery is None:
        err_console.print(f"no stored state for SKU {sku!r}")
        raise typer.Exit(1)
    if as_json or fmt == "json":
        print(json.dumps(gallery, indent=2))
        return
    state = "DELETED" if gallery["deleted"] else "live"
    out_console.print(
        f"[bold]{escape(gallery['sku'])}[/bold]  version {gallery['version']}  {state}  "
        f"name={escape(repr(gallery['name']))}  enabled={gallery['enabled']}",
        highlight=False,
    )
    table = Table("pos", "file_path", "etag", "bytes", "label", "roles", "off", "cv")
    table.caption = "off: disabled; cv: content version (+1 per content change)"
    for column in table.columns:
        column.overflow = "fold"
    for img in gallery["images"]:
        table.add_row(
            str(img["position"] if img["position"] is not None else "-"),
            img["file_path"],
            img["etag"],
            str(img["size_bytes"]),
            img["label"] or "",
            ",".join(img["roles"]),
            "yes" if img["disabled"] else "",
            str(img["content_version"]),
        )
    out_console.print(table)


@gallery_app.command("export")
def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl")] = "jsonl",
) -> None:
    """Every SKU as one JSON object per line, images sorted by position then file_path."""
    from streamer.gallery.export import export_galleries

    if fmt != "jsonl":
        err_console.print("[red]error:[/red] --format must be jsonl")
        raise typer.Exit(2)
    settings = settings_from(require=JOB.sections)

    async def dump() -> int:
        n = 0
        async for gallery in export_galleries(settings.database.dsn):
            sys.stdout.write(json.dumps(gallery, sort_keys=True) + "\n")
            n += 1
        return n

    with fail_cleanly():
        run(dump())
