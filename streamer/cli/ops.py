"""Operations: ``topics create``, ``db migrate``, ``dlq list | show | replay`` and ``status``."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from streamer.cli._common import err_console, fail_cleanly, run, settings_from

__all__ = ["db_app", "dlq_app", "status", "topics_app"]

dlq_app = typer.Typer(help="The dead-letter topic: counts, details, replay.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
db_app = typer.Typer(help="PostgreSQL schema.", no_args_is_help=True)


@topics_app.command("create")
def create(
    partitions: Annotated[
        int | None, typer.Option("--partitions", help="partitions per topic")
    ] = None,
    replication_factor: Annotated[int | None, typer.Option("--replication-factor")] = None,
    bootstrap: Annotated[str | None, typer.Option("--bootstrap")] = None,
) -> None:
    """Create every topic streamer uses (existing ones are reported)."""
    from streamer.ops.topics import create_topics

    settings = settings_from(kafka_bootstrap=bootstrap)
    with fail_cleanly():
        created = create_topics(
            settings, partitions=partitions, replication_factor=replication_factor
        )
    table = Table("topic", "status")
    for name, state in created.items():
        table.add_row(name, state)
    Console(stderr=True).print(table)


@db_app.command("migrate")
def migrate() -> None:
    """Create or upgrade the schema (idempotent, safe to run concurrently)."""
    from streamer.ops.schema import migrate_all

    settings = settings_from()
    with fail_cleanly():
        applied = run(migrate_all(settings.database.dsn))
    err_console.print(
        "applied: " + (", ".join(applied) if applied else "nothing, schema is current")
    )


def _ms(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {flag} {text!r} is not an ISO date/time")
        raise typer.Exit(2) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


@dlq_app.command("list")
def dlq_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Dead letters counted by reason, by original topic and by job, with the oldest and newest."""
    from streamer.ops.deadletters import when
    from streamer.runtime.replay import read_dead_letters

    settings = settings_from()
    topic = settings.runtime.dlq_topic
    with fail_cleanly():
        letters = list(read_dead_letters(settings.kafka, topic))
    by_reason = Counter(r.reason for r in letters)
    by_topic = Counter(r.topic for r in letters)
    by_job = Counter(r.job or "-" for r in letters)
    times = [r.last_failure_ms for r in letters if r.last_failure_ms]
    summary = {
        "topic": topic,
        "total": len(letters),
        "by_reason": dict(by_reason.most_common()),
        "by_topic": dict(by_topic.most_common()),
        "by_job": dict(by_job.most_common()),
        "oldest": when(min(times)) if times else None,
        "newest": when(max(times)) if times else None,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table("reason", "dead letters", title=f"{topic}: {len(letters)} dead letters")
    for reason, n in by_reason.most_common():
        table.add_row(reason, str(n))
    console = Console()
    console.print(table)
    for original, n in by_topic.most_common():
        console.print(f"  from {original}: {n}")
    for job, n in by_job.most_common():
        console.print(f"  job {job}: {n}")
    console.print(f"  oldest {summary['oldest']}  newest {summary['newest']}")


@dlq_app.command("show")
def dlq_show(
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    sku: Annotated[str | None, typer.Option("--sku")] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="original topic")] = None,
    job: Annotated[str | None, typer.Option("--job", help="job that failed")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Dead letters with their error headers and decoded events, filtered."""
    from streamer.ops.deadletters import dead_letter_view
    from streamer.runtime.replay import DeadLetterFilter, read_dead_letters

    settings = settings_from()
    wanted = DeadLetterFilter(reason=reason, sku=sku, topic=topic, job=job)
    with fail_cleanly():
        letters = [
            r
            for r in read_dead_letters(settings.kafka, settings.runtime.dlq_topic)
            if wanted.matches(r)
        ]
    shown = [dead_letter_view(r) for r in letters[:limit]]
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    console = Console()
    for item in shown:
        console.rule(f"{item['reason']}  {item['original']}  sku={item['sku']}")
        console.print(f"  {item['message']}")
        console.print(
            f"  attempts {item['attempts']}  first {item['first_failure']}  last {item['last_failure']}"
        )
        console.print_json(json.dumps(item["event"]))
    err_console.print(f"{len(shown)} shown of {len(letters)} matching")


@dlq_app.command("replay")
def dlq_replay(
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    sku: Annotated[str | None, typer.Option("--sku")] = None,
    job: Annotated[str | None, typer.Option("--job", help="job that failed")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time of last failure")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time of last failure")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send matching dead letters back to their original topic; each is replayed once."""
    from streamer.runtime.replay import DeadLetterFilter, replay_dead_letters

    settings = settings_from()
    wanted = DeadLetterFilter(
        reason=reason,
        sku=sku,
        job=job,
        since_ms=_ms(since, "--since"),
        until_ms=_ms(until, "--until"),
    )
    with fail_cleanly():
        result = run(
            replay_dead_letters(
                settings.kafka,
                settings.database,
                settings.runtime.dlq_topic,
                wanted,
                dry_run=dry_run,
            )
        )
    out: dict[str, Any] = {
        "dry_run": dry_run,
        "matched": result.matched,
        "replayed": result.replayed,
        "already_replayed": result.already_replayed,
        "would_replay": [f"{r.topic}[{r.partition}]@{r.offset} {r.reason}" for r in result.records]
        if dry_run
        else [],
    }
    if as_json:
        print(json.dumps(out, indent=2))
        return
    verb = "would replay" if dry_run else "replayed"
    count = len(result.records) if dry_run else result.replayed
    err_console.print(
        f"matched {result.matched}, {verb} {count}, skipped {result.already_replayed} already replayed"
    )
    for line in out["would_replay"]:
        err_console.print(f"  {line}")


def status(
    request_id: Annotated[str | None, typer.Option("--request-id")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Lag per partition, dead letters by reason, and a request's outcomes."""
    from streamer.ops.status import collect_status

    settings = settings_from()
    with fail_cleanly():
        report = collect_status(settings, request_id=request_id)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    console = Console()
    table = Table(
        "topic",
        "partition",
        "committed",
        "high watermark",
        "lag",
        title=f"group {report['group_id']}",
    )
    for row in report["lag"]:
        table.add_row(
            row["topic"],
            str(row["partition"]),
            str(row["committed"]),
            str(row["high_watermark"]),
            str(row["lag"]),
        )
    console.print(table)
    console.print(f"total lag: {report['total_lag']}")
    dl = Table("reason", "dead letters", title="dead letters")
    for reason, n in report["dead_letters"].items():
        dl.add_row(reason, str(n))
    console.print(dl)
    if request_id is not None:
        req = Table("outcome", "events", title=f"request {request_id}")
        for outcome, n in report["request"]["outcomes"].items():
            req.add_row(outcome, str(n))
        console.print(req)
        for bulk in report["request"]["bulks"]:
            state = "complete" if bulk["complete"] else bulk["state"]
            counts = ", ".join(f"{k} {v}" for k, v in bulk["counts"].items() if v)
            console.print(
                f"  bulk {bulk['bulk_uuid']}: {state}, {bulk['processed']}/{bulk['accepted']} "
                f"processed ({counts or 'nothing yet'}), rejected {bulk['rejected']}"
                + (
                    f", completed {bulk['completed_at']:%Y-%m-%d %H:%M:%S}"
                    if bulk["completed_at"]
                    else ""
                )
            )
        for failed in report["request"]["failed"]:
            console.print(
                f"  {failed['outcome']}: {failed['sku']} {failed['reason']} (event {failed['event_id']})"
            )
