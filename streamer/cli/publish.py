"""``streamer publish FILE``: JSON lines of events, or the gallery connector's bulk payload."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from streamer.cli._common import err_console, fail_cleanly, settings_from
from streamer.errors import (
    DeliveryError,
    InvalidEvent,
    SchemaRegistryUnavailable,
    SchemaRejected,
)

__all__ = ["publish"]


def publish(
    file: Annotated[
        Path, typer.Argument(help="JSON lines of events, or a bulk payload; '-' for stdin")
    ],
    fmt: Annotated[str, typer.Option("--format", help="auto, jsonl or bulk")] = "auto",
    source: Annotated[
        str, typer.Option("--source", help="source of events that carry none")
    ] = "cli",
    as_json: Annotated[
        bool, typer.Option("--json", help="acknowledgment as JSON on stdout")
    ] = False,
    bootstrap: Annotated[str | None, typer.Option("--bootstrap")] = None,
) -> None:
    """Validate, de-duplicate and publish events; print an acknowledgment per item."""
    from streamer.contract.codec import Codec
    from streamer.contract.ingest import VersionClock, detect_format, parse_bulk, parse_jsonl
    from streamer.contract.publishing import EventPublisher
    from streamer.runtime.publisher import Publisher

    settings = settings_from(kafka_bootstrap=bootstrap)
    text = sys.stdin.read() if str(file) == "-" else _read(file)
    if not text.strip():
        err_console.print(f"[red]error:[/red] {file} is empty: no events to publish")
        raise typer.Exit(2)
    kind = detect_format(text) if fmt == "auto" else fmt
    clock = VersionClock()
    try:
        if kind == "bulk":
            ingested = parse_bulk(json.loads(text), clock=clock, source=source)
        elif kind == "jsonl":
            ingested = parse_jsonl(text.splitlines(), clock=clock, source=source)
        else:
            err_console.print("[red]error:[/red] --format must be auto, jsonl or bulk")
            raise typer.Exit(2)
    except (InvalidEvent, json.JSONDecodeError) as exc:
        err_console.print(f"[red]error:[/red] {escape(f'{file}: {exc}')}")
        raise typer.Exit(2) from exc

    if ingested.events:
        with fail_cleanly():
            publisher = Publisher(settings.kafka)
            publisher.start()
            publisher.check_topics([settings.topics.product_topic, settings.topics.media_topic])
            events = EventPublisher(
                publisher, Codec.for_registry(settings.kafka.schema_registry_url), settings.topics
            )
            progress = Progress(
                TextColumn("publishing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                disable=len(ingested.events) < 1000,
            )
            try:
                events.prepare(event for _, event in ingested.events)
            except (SchemaRejected, SchemaRegistryUnavailable) as exc:
                publisher.close(timeout_s=1.0)
                err_console.print(f"[red]error:[/red] {escape(exc.message)}; nothing was published")
                raise typer.Exit(1) from exc
            try:
                with progress:
                    task = progress.add_task("publish", total=len(ingested.events))
                    for i, (_, event) in enumerate(ingested.events, start=1):
                        events.publish(event)
                        if i % 500 == 0:
                            progress.update(task, completed=i)
                    progress.update(task, completed=len(ingested.events))
                publisher.flush(timeout_s=settings.kafka.delivery_timeout_ms / 1000 + 5)
            except DeliveryError as exc:
                for item_ack, _ in ingested.events:
                    item_ack.status, item_ack.reason, item_ack.error_message = (
                        "undeliverable",
                        "delivery_failed",
                        str(exc),
                    )
            finally:
                with contextlib.suppress(DeliveryError):
                    publisher.close(timeout_s=1.0)

    ack = ingested.acknowledgment()
    if as_json:
        print(json.dumps(ack, indent=2))
    else:
        table = Table(
            "id", "sku", "status", "reason", "message", title=f"request {ack['request_id'] or '-'}"
        )
        for item in ack["request_items"]:
            color = {"accepted": "green", "superseded": "yellow"}.get(item["status"], "red")
            table.add_row(
                str(item["id"]),
                item["sku"] or "",
                f"[{color}]{item['status']}[/{color}]",
                item["reason"] or "",
                (item["error_message"] or "")[:80],
            )
        Console(stderr=True).print(table)
        accepted = sum(1 for i in ack["request_items"] if i["status"] == "accepted")
        err_console.print(
            f"{accepted} accepted of {len(ack['request_items'])}; errors: {ack['errors']}"
        )
    if ack["errors"]:
        raise typer.Exit(1)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot read {file}: {exc.strerror}")
        raise typer.Exit(2) from exc
    except UnicodeDecodeError as exc:
        err_console.print(f"[red]error:[/red] {file} is not UTF-8 text")
        raise typer.Exit(2) from exc
