"""``streamer consume``, ``streamer db migrate`` and ``streamer gallery show|export``."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamer.cli._common import err_console, fail_cleanly, settings_from

__all__ = ["consume", "db_app", "gallery_app"]

db_app = typer.Typer(help="PostgreSQL schema.", no_args_is_help=True)
gallery_app = typer.Typer(help="Read stored galleries.", no_args_is_help=True)


def _run(coro: object) -> object:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def consume(
    group_id: Annotated[str | None, typer.Option("--group-id", help="Consumer group")] = None,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="0 disables")] = None,
    batch_max_events: Annotated[int | None, typer.Option("--batch-max-events")] = None,
    batch_max_wait_ms: Annotated[int | None, typer.Option("--batch-max-wait-ms")] = None,
) -> None:
    """Run a consumer-group worker until SIGTERM/SIGINT (the batch in hand is finished first)."""
    from streamer.worker import Worker

    settings = settings_from(
        group_id=group_id,
        kafka_bootstrap=bootstrap,
        metrics_port=metrics_port,
        batch_max_events=batch_max_events,
        batch_max_wait_ms=batch_max_wait_ms,
    )
    with fail_cleanly():
        worker = Worker(settings)
        stats = _run(worker.run())
    err_console.print(f"stopped after {stats.batches} batches")  # type: ignore[attr-defined]


@db_app.command("migrate")
def migrate() -> None:
    """Create or upgrade the schema (idempotent, safe to run concurrently)."""
    from streamer.db import migrate as run_migrations

    settings = settings_from()
    with fail_cleanly():
        applied = asyncio.run(run_migrations(settings.database_dsn))
    err_console.print(
        "applied: " + (", ".join(applied) if applied else "nothing, schema is current")
    )


@gallery_app.command("show")
def show(
    sku: str,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Show one SKU's stored gallery."""
    from streamer.export import load_gallery

    settings = settings_from()
    with fail_cleanly():
        gallery = asyncio.run(load_gallery(settings.database_dsn, sku))
    if gallery is None:
        err_console.print(f"no stored state for SKU {sku!r}")
        raise typer.Exit(1)
    if fmt == "json":
        print(json.dumps(gallery, indent=2))
        return
    state = "DELETED" if gallery["deleted"] else "live"
    err_console.print(
        f"[bold]{gallery['sku']}[/bold]  version {gallery['version']}  {state}  "
        f"name={gallery['name']!r}  enabled={gallery['enabled']}"
    )
    table = Table("pos", "file_path", "etag", "bytes", "label", "roles", "disabled", "content v")
    for img in gallery["images"]:
        table.add_row(
            str(img["position"] if img["position"] is not None else "-"),
            img["file_path"],
            img["etag"][:12],
            str(img["size_bytes"]),
            img["label"] or "",
            ",".join(img["roles"]),
            "yes" if img["disabled"] else "",
            str(img["content_version"]),
        )
    Console().print(table)


@gallery_app.command("export")
def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl")] = "jsonl",
) -> None:
    """Every SKU as one JSON object per line, images sorted by position then file_path."""
    from streamer.export import export_galleries

    if fmt != "jsonl":
        err_console.print("[red]error:[/red] --format must be jsonl")
        raise typer.Exit(2)
    settings = settings_from()

    async def dump() -> int:
        n = 0
        async for gallery in export_galleries(settings.database_dsn):
            sys.stdout.write(json.dumps(gallery, sort_keys=True) + "\n")
            n += 1
        return n

    with fail_cleanly():
        asyncio.run(dump())


def bench(
    skus: Annotated[int, typer.Option("--skus", help="SKUs (one 5-image event each)")] = 5000,
    images: Annotated[int, typer.Option("--images", help="images per SKU")] = 5,
    objects: Annotated[int, typer.Option("--objects", help="distinct S3 objects")] = 2000,
    etag_source: Annotated[str | None, typer.Option("--etag-source", help="head or list")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Throughput benchmark on the configured stack: first sync, then a no-op re-sync."""
    from streamer.bench import run_benchmark, summary_rows

    settings = settings_from(etag_source=etag_source)
    with fail_cleanly():
        results = _run(
            run_benchmark(
                settings,
                n_skus=skus,
                images_per_sku=images,
                n_objects=objects,
                log=lambda line: err_console.print(line),
            )
        )
    rows = summary_rows(results)  # type: ignore[arg-type]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(*rows[0].keys(), title=f"streamer bench (ETag source: {settings.etag_source})")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()))
    Console().print(table)


def _json_default(value: object) -> str:
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else str(value)


def loadgen(
    output: Annotated[str, typer.Argument(help="JSON lines file to write ('-' for stdout)")] = "-",
    skus: Annotated[int, typer.Option("--skus")] = 1000,
    images: Annotated[int, typer.Option("--images")] = 5,
    objects: Annotated[int, typer.Option("--objects", help="distinct object paths")] = 1000,
    upload: Annotated[bool, typer.Option("--upload", help="also put the objects in S3")] = False,
) -> None:
    """Write a synthetic catalog as JSON lines for `streamer publish`."""
    import time

    from rich.progress import Progress

    from streamer.bench import generate_catalog, object_paths, upload_objects
    from streamer.codec import event_record

    paths = object_paths(objects)
    events = generate_catalog(
        skus, images, paths, version=int(time.time() * 1000), request_id="loadgen"
    )
    if upload:
        settings = settings_from()
        with Progress(console=err_console) as progress, fail_cleanly():
            task = progress.add_task("uploading objects", total=len(paths))
            upload_objects(settings, paths, lambda n: progress.advance(task, n))
    out = sys.stdout if output == "-" else open(output, "w")  # noqa: SIM115 - closed below
    try:
        for event in events:
            record = {"type": event.type.value, **event_record(event)}
            out.write(json.dumps(record, default=_json_default) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    err_console.print(f"wrote {len(events)} events over {len(paths)} objects")


def demo() -> None:
    """The product's story on the embedded stack, step by step (exits non-zero if a step misbehaves)."""
    from streamer.cli.dev import home_dir
    from streamer.demo import run_demo
    from streamer.devstack import database_url_from_env

    with fail_cleanly():
        ok = run_demo(home_dir(), database_url_from_env())
    if not ok:
        raise typer.Exit(1)
