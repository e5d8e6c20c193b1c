"""Development tools: ``streamer dev up|down|status``, ``demo``, ``bench`` and ``loadgen``.

They live in ``streamer.dev`` and need the ``dev-stack`` extra; everything is
imported inside the commands, so an installation without it runs the product.
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamer.cli._common import err_console, fail_cleanly, out_console, run, settings_from

if TYPE_CHECKING:
    from streamer.dev.stack import DevStack
    from streamer.settings import Settings

__all__ = ["app", "bench", "demo", "home_dir", "loadgen"]

app = typer.Typer(
    help="The embedded development stack (Kafka broker, PostgreSQL, S3 server).",
    no_args_is_help=True,
)


def home_dir() -> Path:
    return Path(os.environ.get("STREAMER_HOME", ".streamer"))


class Broker(StrEnum):
    tansu = "tansu"
    kafka = "kafka"


def _stack(broker: str | None = None, kafka_nodes: int = 1) -> DevStack:
    from streamer.dev.stack import DevStack, database_url_from_env

    return DevStack(
        home_dir(),
        database_url=database_url_from_env(),
        broker="kafka" if broker == "kafka" else "tansu" if broker == "tansu" else None,
        kafka_nodes=kafka_nodes,
    )


@app.command()
def up(
    broker: Annotated[
        Broker | None,
        typer.Option(
            "--broker",
            help="tansu (default: no Java, starts in milliseconds, for the demo) or kafka "
            "(Apache Kafka from Maven Central: needs Java 17+ and Maven; what production runs)",
            show_default=False,
        ),
    ] = None,
    kafka_nodes: Annotated[
        int,
        typer.Option(
            "--kafka-nodes",
            min=1,
            help="Apache Kafka nodes: 1, or 3 for a cluster with replication factor 3 and "
            "min.insync.replicas=2",
        ),
    ] = 1,
) -> None:
    """Start the stack (idempotent) and print its settings as export lines."""
    from streamer.dev.stack import StackError, shown_url

    if kafka_nodes != 1 and broker is not Broker.kafka:
        err_console.print("[red]error:[/red] --kafka-nodes needs --broker kafka")
        raise typer.Exit(2)
    dev = _stack(broker.value if broker else None, kafka_nodes)
    try:
        state = dev.up()
    except StackError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    for key, component in state.components.items():
        origin = "started" if component.owned else "external"
        shown = shown_url(component.url)
        pid = f", pid {component.pid}" if component.node_id is not None else ""
        err_console.print(f"[green]✓[/green] {key:<9} {shown}  ({origin}{pid})")
    err_console.print(
        f"settings written to {dev.env_file} (read by every streamer command run from here)"
    )
    for key, value in state.env().items():
        print(f"export {key}={value}")


@app.command()
def down() -> None:
    """Stop what `dev up` started, and nothing else."""
    stopped = _stack().down()
    err_console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Show whether each part of the stack answers."""
    from streamer.dev.stack import shown_url

    dev = _stack()
    state = dev.load()
    if state is None:
        err_console.print("the development stack is not running (start it with `streamer dev up`)")
        raise typer.Exit(1)
    health = dev.status()
    if as_json:
        parts = {
            name: {"url": shown_url(c.url), "owned": c.owned, "healthy": health[name]}
            for name, c in state.components.items()
        }
        print(json.dumps({"home": str(dev.home.resolve()), "components": parts}, indent=2))
    else:
        table = Table("component", "url", "owned", "healthy")
        table.columns[1].overflow = "fold"
        for name, component in state.components.items():
            table.add_row(
                name,
                shown_url(component.url),
                str(component.owned),
                "yes" if health[name] else "NO",
            )
        out_console.print(table)
    if not all(health.values()):
        raise typer.Exit(1)


_IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
}


@app.command()
def upload(
    files: Annotated[list[Path], typer.Argument(help="local image files to upload")],
    to: Annotated[
        str, typer.Option("--to", help="folder of the file_path, e.g. mugs (default: the top)")
    ] = "",
) -> None:
    """Put local image files into the configured bucket (the dev stack's S3 server), where
    events find them: file_path /<to>/<name>, key STREAMER_S3_PREFIX + file_path."""
    import mimetypes

    from botocore.exceptions import BotoCoreError, ClientError

    from streamer.storage.clients import make_s3_client
    from streamer.storage.errors import object_store_error
    from streamer.storage.keys import s3_key

    settings = settings_from()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        err_console.print(f"[red]error:[/red] not a file: {escape(', '.join(missing))}")
        raise typer.Exit(2)
    folder = "/".join(part for part in to.strip("/").split("/") if part)
    s3 = make_s3_client(settings.s3)
    table = Table("file", "file_path", "bytes", title=f"bucket {settings.s3.s3_bucket}")
    for column in table.columns:
        column.overflow = "fold"
    with fail_cleanly():
        for file in files:
            file_path = "/" + "/".join(p for p in (folder, file.name) if p)
            content_type = _IMAGE_TYPES.get(file.suffix.lower()) or (
                mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            )
            try:
                s3.put_object(
                    Bucket=settings.s3.s3_bucket,
                    Key=s3_key(settings.s3.s3_prefix, file_path),
                    Body=file.read_bytes(),
                    ContentType=content_type,
                )
            except (ClientError, BotoCoreError) as exc:
                raise object_store_error(
                    exc, f"upload of {file} to bucket {settings.s3.s3_bucket!r}"
                ) from exc
            table.add_row(str(file), file_path, str(file.stat().st_size))
    out_console.print(table)
    err_console.print("use each file_path in your events' images")


def demo() -> None:
    """The product's story on the embedded stack, step by step (exits non-zero if a step misbehaves)."""
    from streamer.dev.demo import run_demo
    from streamer.dev.stack import database_url_from_env

    with fail_cleanly():
        ok = run_demo(home_dir(), database_url_from_env())
    if not ok:
        raise typer.Exit(1)


def bench(
    skus: Annotated[int, typer.Option("--skus", help="SKUs (one gallery event each)")] = 5000,
    images: Annotated[int, typer.Option("--images", help="images per SKU")] = 5,
    objects: Annotated[int, typer.Option("--objects", help="distinct S3 objects")] = 2000,
    shape: Annotated[
        str,
        typer.Option(
            "--shape",
            help="object layout: shared (folders of 500, LIST pays) or sharded "
            "(Magento's /a/b/ab12cd34.jpg, a few objects per folder, HEAD pays)",
        ),
    ] = "shared",
    naive_events: Annotated[
        int, typer.Option("--naive-events", help="events the naive consumer re-syncs (it is slow)")
    ] = 1000,
    etag_source: Annotated[
        str | None, typer.Option("--etag-source", help="auto, head or list")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
    phase: Annotated[
        list[str] | None,
        typer.Option(
            "--phase",
            help="run only these phases, in this order (repeatable; a phase may be given "
            "twice): first_sync, noop_resync, noop_resync_pruning, noop_resync_index, steady_sync, "
            "naive_noop_resync, trace_off, trace_1.0, trace_0.01",
        ),
    ] = None,
    forward: Annotated[
        int | None,
        typer.Option("--forward", help="instead: N events through the webhook forwarder"),
    ] = None,
) -> None:
    """Throughput benchmark on the configured stack: ceilings of the parts, then first sync,
    no-op re-sync (S3 look-ups, the same with the retention pruner busy beside it, then the
    object index) and the naive consumer's no-op re-sync,
    each beside what binds it (or, with
    --forward N, webhook deliveries/s to a local receiver, single and batched)."""
    from streamer.dev.bench import format_table, run_benchmark

    settings = settings_from(etag_source=etag_source)
    if forward is not None:
        _bench_forward(settings, forward, json_out)
        return
    err_console.print(
        f"streamer bench: {skus:,} SKUs x {images} images over {objects:,} {shape} objects, "
        f"ETag source {settings.gallery.etag_source}"
    )
    with fail_cleanly():
        result = run(
            run_benchmark(
                settings,
                n_skus=skus,
                images_per_sku=images,
                n_objects=objects,
                naive_events=naive_events,
                shape=shape,
                phases=phase or None,
                log=lambda line: err_console.print(line, markup=False, highlight=False),
            )
        )
    if json_out:
        print(json.dumps(result.as_json(), indent=2))
        return
    print(format_table(result))


def _bench_forward(settings: Settings, n_events: int, json_out: bool) -> None:
    from streamer.dev.bench_forward import run_forward_benchmark

    with fail_cleanly():
        results = run(
            run_forward_benchmark(
                settings, n_events=n_events, log=lambda line: err_console.print(line)
            )
        )
    rows = [r.row() for r in results]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(*rows[0].keys(), title="streamer bench --forward (local verifying receiver)")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()))
    Console().print(table)


def _json_default(value: object) -> str:
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value)


def loadgen(
    output: Annotated[str, typer.Argument(help="JSON lines file to write ('-' for stdout)")] = "-",
    skus: Annotated[int, typer.Option("--skus", help="SKUs (one gallery event each)")] = 1000,
    images: Annotated[int, typer.Option("--images", help="images per SKU")] = 5,
    objects: Annotated[int, typer.Option("--objects", help="distinct object paths")] = 1000,
    upload: Annotated[bool, typer.Option("--upload", help="also put the objects in S3")] = False,
    prefix: Annotated[str, typer.Option("--prefix", help="SKU prefix")] = "BENCH",
) -> None:
    """Write a synthetic catalog as JSON lines for `streamer publish` (streamed: any size)."""
    from rich.progress import Progress

    from streamer.contract.codec import event_record
    from streamer.dev.loadgen import iter_catalog, object_paths, upload_objects

    paths = object_paths(objects)
    events = iter_catalog(
        skus, images, paths, version=int(time.time() * 1000), request_id="loadgen", prefix=prefix
    )
    if upload:
        settings = settings_from()
        with Progress(console=err_console) as progress, fail_cleanly():
            task = progress.add_task("uploading objects", total=len(paths))
            upload_objects(settings.s3, paths, lambda n: progress.advance(task, n))
    out = sys.stdout if output == "-" else open(output, "w")  # noqa: SIM115 - closed below
    try:
        for event in events:
            record = {"type": event.type.value, **event_record(event)}
            out.write(json.dumps(record, default=_json_default) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    err_console.print(f"wrote {skus} events over {len(paths)} objects")
