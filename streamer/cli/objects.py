"""``streamer objects consume`` (the index from bucket notifications) and ``objects reconcile``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamer.cli._common import err_console, fail_cleanly, run, run_job, settings_from
from streamer.objects.job import JOB

__all__ = ["objects_app", "register"]

objects_app = typer.Typer(
    help="The object index: bucket notifications in, ETags without S3 requests, galleries that "
    "follow overwrites and deletes (STREAMER_OBJECTS_*)."
)


@objects_app.command("consume")
def consume(
    group_id: Annotated[
        str | None, typer.Option("--group-id", help="Consumer group (Kafka source)")
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", help="Notification topic (Kafka source)")
    ] = None,
    sqs_url: Annotated[
        str | None, typer.Option("--sqs-url", help="Read S3's notifications from this SQS queue")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="0 disables")] = None,
) -> None:
    """Keep the object index current until SIGTERM/SIGINT, from the topic or the SQS queue."""
    run_job(
        JOB,
        objects_group_id=group_id,
        objects_topic=topic,
        objects_sqs_url=sqs_url,
        metrics_port=metrics_port,
    )


@objects_app.command("reconcile")
def reconcile(
    prefix: Annotated[
        str | None,
        typer.Option(
            "--prefix", help="Only keys starting with this (default: STREAMER_S3_PREFIX/)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Keys listed per kind")] = 20,
) -> None:
    """List the bucket, repair the index where notifications were lost, re-check galleries."""
    from rich.progress import Progress

    from streamer.objects.reconcile import reconcile as run_reconcile
    from streamer.objects.worker import make_handler

    settings = settings_from(require=JOB.sections)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar, fail_cleanly():
        task = bar.add_task("listing", total=None)
        report = run(
            run_reconcile(
                settings,
                make_handler(settings),
                prefix=prefix,
                progress=lambda n: bar.update(task, completed=n),
            )
        )
    summary = report.summary()
    kinds = {"missing": report.missing, "stale": report.stale, "gone": report.gone}
    if as_json:
        print(json.dumps({**summary, "keys": {k: v[:limit] for k, v in kinds.items()}}, indent=2))
        return
    table = Table("kind", "keys", title=f"s3://{settings.s3.s3_bucket}/{report.prefix}")
    for name in ("listed", "missing", "stale", "gone", "repaired", "rechecks"):
        table.add_row(name, str(summary[name]))
    Console().print(table)
    for kind, keys in kinds.items():
        for key in keys[:limit]:
            err_console.print(f"  {kind}: {key}")


def register(app: typer.Typer) -> None:
    app.add_typer(objects_app, name="objects")
