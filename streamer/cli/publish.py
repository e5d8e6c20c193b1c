"""``streamer publish FILE``: JSON lines of events, or the gallery connector's bulk payload.

Without ``--wait`` the events go straight to their topics. With ``--wait`` they are taken
in as ``streamer serve`` takes a request (tracked as a bulk in PostgreSQL, each event
carrying its item), and the command follows the bulk until every item has its outcome.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from streamer.cli._common import (
    err_console,
    fail_cleanly,
    out_console,
    run,
    settings_from,
    traced,
    waiting,
)
from streamer.contract.errors import InvalidEvent, SchemaRegistryUnavailable, SchemaRejected
from streamer.runtime.errors import DeliveryError

__all__ = ["EXIT_FAILED", "EXIT_TIMEOUT", "publish"]

EXIT_FAILED = 1  # an item rejected, undeliverable, partial or dead-lettered
EXIT_TIMEOUT = 2  # --wait: not every item had its outcome in time
_FINE = ("written", "noop", "stale", "duplicate")


def publish(
    file: Annotated[
        Path, typer.Argument(help="JSON lines of events, or a bulk payload; '-' for stdin")
    ],
    fmt: Annotated[str, typer.Option("--format", help="auto, jsonl or bulk")] = "auto",
    source: Annotated[
        str, typer.Option("--source", help="source of events that carry none")
    ] = "cli",
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="track the events as a bulk and follow it until every item has its outcome; "
            "exit 0 when all are written, no-op or stale, 1 when any is rejected, partial or "
            "dead-lettered, 2 on --timeout",
        ),
    ] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="with --wait: seconds before giving up (exit 2)")
    ] = 300.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="the acknowledgment (and outcomes) as JSON on stdout")
    ] = False,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers (host:port)")
    ] = None,
) -> None:
    """Validate, de-duplicate and publish events; print an acknowledgment per item.

    A JSON line is one event with a `type` (media or product):

    {"type": "media", "sku": "SKU-1", "images": [{"file_path": "a/b.jpg", "roles": ["base"]}]}
    """
    settings = settings_from(kafka_bootstrap=bootstrap)
    text = sys.stdin.read() if str(file) == "-" else _read(file)
    if not text.strip():
        err_console.print(f"[red]error:[/red] {file} is empty: no events to publish")
        raise typer.Exit(2)
    from streamer.contract.ingest import detect_format

    kind = detect_format(text) if fmt == "auto" else fmt
    if kind not in ("bulk", "jsonl"):
        err_console.print("[red]error:[/red] --format must be auto, jsonl or bulk")
        raise typer.Exit(2)
    with traced("streamer-publish"):
        if wait:
            _publish_and_wait(settings, text, kind, source, timeout_s, as_json, file)
            return
        _publish(settings, text, kind, source, as_json, file)


def _publish(settings: Any, text: str, kind: str, source: str, as_json: bool, file: Path) -> None:
    from streamer.contract.ingest import VersionClock, parse_bulk, parse_jsonl
    from streamer.runtime import tracing

    clock = VersionClock()
    try:
        if kind == "bulk":
            ingested = parse_bulk(json.loads(text), clock=clock, source=source)
        else:
            ingested = parse_jsonl(text.splitlines(), clock=clock, source=source)
    except (InvalidEvent, json.JSONDecodeError) as exc:
        err_console.print(f"[red]error:[/red] {escape(f'{file}: {exc}')}")
        raise typer.Exit(2) from exc

    attributes = {
        "streamer.request_id": ingested.request_id or "",
        "streamer.items": len(ingested.acks),
    }
    with tracing.span("publish", attributes, kind=tracing.SpanKind.PRODUCER):
        _send(settings, ingested)
    _acknowledge(ingested, as_json)


def _send(settings: Any, ingested: Any) -> None:
    """Produce every accepted event, each with the run's trace context."""
    from streamer.contract.codec import Codec
    from streamer.contract.publishing import EventPublisher
    from streamer.runtime import tracing
    from streamer.runtime.publisher import Publisher

    if ingested.events:
        with fail_cleanly():
            publisher = Publisher(settings.kafka)
            publisher.start()
            with waiting(f"checking the topics on Kafka at {settings.kafka.kafka_bootstrap}"):
                publisher.check_topics([settings.topics.product_topic, settings.topics.media_topic])
            events = EventPublisher(
                publisher,
                Codec.for_registry(settings.kafka.schema_registry_url),
                settings.topics,
                headers=tracing.headers_of_current(),
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


def _acknowledge(ingested: Any, as_json: bool) -> None:
    ack = ingested.acknowledgment()
    if as_json:
        print(json.dumps(ack, indent=2))
    else:
        _print_items(f"request {ack['request_id'] or '-'}", ack["request_items"])
        accepted = sum(1 for i in ack["request_items"] if i["status"] == "accepted")
        err_console.print(
            f"{accepted} accepted of {len(ack['request_items'])}; errors: {ack['errors']}"
        )
    if ack["errors"]:
        raise typer.Exit(EXIT_FAILED)


def _print_items(title: str, items: list[dict[str, Any]], *, outcomes: bool = False) -> None:
    """Items as a table that wraps long values at the terminal's width instead of cutting them."""
    columns = ["id", "sku", "status", *(["outcome"] if outcomes else []), "reason", "message"]
    table = Table(*columns, title=title)
    for column in table.columns:
        column.overflow = "fold"
    for item in items:
        color = {"accepted": "green", "superseded": "yellow"}.get(item["status"], "red")
        row = [str(item["id"]), escape(item["sku"] or ""), f"[{color}]{item['status']}[/{color}]"]
        if outcomes:
            outcome = item.get("outcome") or ""
            shade = "green" if outcome in _FINE else ("red" if outcome else "")
            row.append(f"[{shade}]{outcome}[/{shade}]" if shade else outcome)
        reason = item.get("outcome_reason") or item["reason"] or ""
        row += [escape(reason), escape(item["error_message"] or "")]
        table.add_row(*row)
    out_console.print(table)


def _publish_and_wait(
    settings: Any, text: str, kind: str, source: str, timeout_s: float, as_json: bool, file: Path
) -> None:
    from streamer.api.intake import Intake
    from streamer.api.metrics import ApiMetrics
    from streamer.contract.codec import Codec
    from streamer.runtime.database import Database
    from streamer.runtime.metrics import new_registry
    from streamer.tracking.store import load_bulk, load_items

    payload: Any = None
    if kind == "bulk":
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            err_console.print(f"[red]error:[/red] {escape(f'{file}: {exc}')}")
            raise typer.Exit(2) from exc

    async def take_and_follow() -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
        database = Database(settings.database)
        await database.start()
        intake = Intake(
            kafka=settings.kafka,
            topics=settings.topics,
            api=settings.api.model_copy(update={"api_max_items": 10**9}),
            database=database,
            codec=Codec.for_registry(settings.kafka.schema_registry_url),
            metrics=ApiMetrics(new_registry()),
        )
        intake.start()
        try:
            with waiting(
                f"publishing through Kafka at {settings.kafka.kafka_bootstrap}, tracked in "
                "PostgreSQL"
            ):
                if payload is not None:
                    reply = await intake.bulk(payload, source=source)
                else:
                    reply = await intake.events(text, None, source=source)
            if reply.status_code != 202 or reply.bulk_uuid is None:
                return reply.body, None, True
            bulk_uuid = reply.bulk_uuid
            deadline = time.monotonic() + timeout_s
            bulk: dict[str, Any] | None = None
            with Progress(
                TextColumn("waiting for the consumers"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                console=err_console,
                transient=True,
            ) as progress:
                accepted = sum(1 for i in reply.body["request_items"] if i["status"] == "accepted")
                task = progress.add_task("wait", total=accepted, counts="")
                while True:
                    async with database.acquire() as conn:
                        bulk = await load_bulk(conn, bulk_uuid)
                    assert bulk is not None
                    counts = bulk["counts"]
                    done = [f"{k} {v}" for k, v in counts.items() if v and k != "pending"]
                    progress.update(task, completed=bulk["processed"], counts=", ".join(done))
                    if counts["pending"] == 0:
                        break
                    if time.monotonic() >= deadline:
                        return reply.body, bulk, False
                    await _sleep(0.5)
            async with database.acquire() as conn:
                items = await load_items(conn, bulk_uuid, after=0, limit=None)
            outcomes = {i["id"]: i for i in items}
            for item in reply.body["request_items"]:
                found = outcomes.get(item["id"], {})
                item["outcome"] = found.get("outcome")
                item["outcome_reason"] = found.get("outcome_reason")
            return reply.body, bulk, True
        finally:
            intake.close()
            await database.stop()

    with fail_cleanly():
        body, bulk, finished = run(take_and_follow())
    items = body["request_items"]
    if as_json:
        print(
            json.dumps(
                {**body, "complete": finished and bulk is not None, "bulk": bulk},
                indent=2,
                default=str,
            )
        )
    else:
        _print_items(
            f"bulk {body.get('bulk_uuid') or '-'} (request {body['request_id']})",
            items,
            outcomes=True,
        )
    if not finished:
        processed = bulk["processed"] if bulk else 0
        accepted = bulk["accepted"] if bulk else 0
        err_console.print(
            f"[yellow]timed out[/yellow] after {timeout_s:.0f} s: {processed} of {accepted} "
            f"items processed; follow it with `streamer status --request-id {body['request_id']}`",
            highlight=False,
        )
        raise typer.Exit(EXIT_TIMEOUT)
    failed = [
        i
        for i in items
        if i["status"] in ("rejected", "undeliverable")
        or (i["status"] == "accepted" and i.get("outcome") not in _FINE)
    ]
    if bulk is not None and not as_json:
        counts = ", ".join(f"{k} {v}" for k, v in bulk["counts"].items() if v)
        err_console.print(f"complete: {counts or 'nothing accepted'}", highlight=False)
    if failed:
        err_console.print(f"{len(failed)} item(s) not applied in full (see their reason)")
        raise typer.Exit(EXIT_FAILED)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot read {file}: {exc.strerror}")
        raise typer.Exit(2) from exc
    except UnicodeDecodeError as exc:
        err_console.print(f"[red]error:[/red] {file} is not UTF-8 text")
        raise typer.Exit(2) from exc
