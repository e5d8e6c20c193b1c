"""``streamer replicate`` (the worker) and ``streamer replicate verify [--prefix] [--repair]``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamer.cli._common import err_console, fail_cleanly, run, run_job, settings_from
from streamer.replicate.job import JOB

__all__ = ["register", "replicate_app"]

replicate_app = typer.Typer(
    help="Copy the images of changed galleries to a destination store (STREAMER_REPLICA_*)."
)


@replicate_app.callback(invoke_without_command=True)
def replicate(
    ctx: typer.Context,
    group_id: Annotated[
        str | None, typer.Option("--group-id", help="Consumer group of the replicator")
    ] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Destination bucket")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="0 disables")] = None,
    batch_max_events: Annotated[
        int | None,
        typer.Option("--batch-max-events", help="records per batch (STREAMER_BATCH_MAX_EVENTS)"),
    ] = None,
) -> None:
    """Run a replicator worker until SIGTERM/SIGINT (the batch in hand is finished first)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"replica_bucket": bucket}
        return
    run_job(
        JOB,
        replica_group_id=group_id,
        replica_bucket=bucket,
        metrics_port=metrics_port,
        batch_max_events=batch_max_events,
    )


@replicate_app.command("verify")
def verify(
    ctx: typer.Context,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Only file paths starting with this, e.g. /a/b")
    ] = "/",
    repair: Annotated[
        bool, typer.Option("--repair", help="Copy what is missing or stale, delete what is extra")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Paths listed per kind")] = 20,
) -> None:
    """Compare the destination with the galleries the replicator recorded and the source bucket."""
    from rich.progress import Progress, TaskID

    from streamer.replicate.verify import verify_replica

    settings = settings_from(require=JOB.sections, **(ctx.obj or {}))
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def show(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        with fail_cleanly():
            settings.replica.bucket()
            report = run(
                verify_replica(
                    settings.replica,
                    settings.s3,
                    settings.database,
                    settings.runtime,
                    prefix=prefix,
                    repair=repair,
                    progress=show,
                )
            )
    summary = report.summary()
    if as_json:
        print(json.dumps({**summary, "paths": _paths(report, limit)}, indent=2))
    else:
        table = Table("kind", "paths", title=f"{report.destination} under {report.prefix}")
        for kind in ("expected", "ok", "missing", "stale", "extra", "source_missing"):
            table.add_row(kind, str(summary[kind]))
        if repair:
            table.add_row("copied", str(report.copied))
            table.add_row("deleted", str(report.deleted))
        Console().print(table)
        for kind, paths in _paths(report, limit).items():
            for path in paths:
                err_console.print(f"  {kind}: {path}")
        for path, why in report.repair_failures.items():
            err_console.print(f"  [red]not repaired[/red] {path}: {why}")
    if report.repair_failures or (not report.clean and not repair):
        raise typer.Exit(1)


def _paths(report: object, limit: int) -> dict[str, list[str]]:
    return {
        kind: getattr(report, kind)[:limit]
        for kind in ("missing", "stale", "extra", "source_missing")
        if getattr(report, kind)
    }


def register(app: typer.Typer) -> None:
    app.add_typer(replicate_app, name="replicate")
