"""Operations: ``topics create``, ``db migrate``, ``dlq list | show | replay`` and ``status``."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from streamer.cli._common import (
    err_console,
    fail_cleanly,
    note,
    out_console,
    run,
    settings_from,
    traced,
    waiting,
)

__all__ = ["db_app", "dlq_app", "status", "topics_app"]

dlq_app = typer.Typer(help="The dead-letter topic: counts, details, replay.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
db_app = typer.Typer(help="PostgreSQL schema.", no_args_is_help=True)


_REASON = typer.Option("--reason", help="only this reason (e.g. object_missing)")
_SKU = typer.Option("--sku", help="only this SKU (the event's, or the message key)")
_JOB = typer.Option("--job", help="only this job: gallery, forward, replicate, objects")
_JSON = typer.Option("--json", help="print JSON on stdout instead of a table")


@topics_app.command("create")
def create(
    partitions: Annotated[
        int | None, typer.Option("--partitions", help="partitions per topic")
    ] = None,
    replication_factor: Annotated[
        int | None,
        typer.Option("--replication-factor", help="replicas per partition (1 on one broker)"),
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers (host:port)")
    ] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Create every topic streamer uses (existing ones are reported)."""
    from streamer.ops.topics import create_topics

    settings = settings_from(kafka_bootstrap=bootstrap)
    with fail_cleanly(), waiting(f"creating topics on Kafka at {settings.kafka.kafka_bootstrap}"):
        created = create_topics(
            settings, partitions=partitions, replication_factor=replication_factor
        )
    if as_json:
        print(json.dumps(created, indent=2))
        return
    table = Table("topic", "status")
    for name, state in created.items():
        table.add_row(name, state)
    out_console.print(table)


@db_app.command("migrate")
def migrate() -> None:
    """Create or upgrade the schema (idempotent, safe to run concurrently)."""
    from streamer.ops.schema import migrate_all

    settings = settings_from()
    with fail_cleanly(), waiting("migrating the PostgreSQL schema"):
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


def _letters(settings: Any) -> list[Any]:
    from streamer.runtime.replay import read_dead_letters

    topic = settings.runtime.dlq_topic
    with waiting(
        f"reading the dead-letter topic {topic} from Kafka at {settings.kafka.kafka_bootstrap}"
    ):
        return list(read_dead_letters(settings.kafka, topic))


def _replayed(settings: Any) -> dict[tuple[int, int], datetime]:
    """Which dead letters were replayed; without PostgreSQL the listing still works, unmarked."""
    from streamer.errors import StreamerError
    from streamer.ops.deadletters import replayed_marks

    try:
        return run(replayed_marks(settings.database.dsn, settings.runtime.dlq_topic))
    except StreamerError as exc:
        note(f"replays are not shown: {exc}")
        return {}


@dlq_app.command("list")
def dlq_list(as_json: Annotated[bool, _JSON] = False) -> None:
    """Dead letters counted by reason (with how many were replayed), by original topic and by
    job, with the oldest and newest."""
    from streamer.ops.deadletters import when

    settings = settings_from()
    topic = settings.runtime.dlq_topic
    with fail_cleanly():
        letters = _letters(settings)
    replayed = _replayed(settings)
    done = [r for r in letters if (r.dlq_partition, r.dlq_offset) in replayed]
    by_reason = Counter(r.reason for r in letters)
    replayed_by_reason = Counter(r.reason for r in done)
    by_topic = Counter(r.topic for r in letters)
    by_job = Counter(r.job or "-" for r in letters)
    times = [r.last_failure_ms for r in letters if r.last_failure_ms]
    summary = {
        "topic": topic,
        "total": len(letters),
        "replayed": len(done),
        "by_reason": dict(by_reason.most_common()),
        "replayed_by_reason": dict(replayed_by_reason.most_common()),
        "by_topic": dict(by_topic.most_common()),
        "by_job": dict(by_job.most_common()),
        "oldest": when(min(times)) if times else None,
        "newest": when(max(times)) if times else None,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(
        "reason",
        "dead letters",
        "replayed",
        "waiting",
        title=f"{topic}: {len(letters)} dead letters, {len(done)} replayed",
    )
    for reason, n in by_reason.most_common():
        table.add_row(
            reason, str(n), str(replayed_by_reason[reason]), str(n - replayed_by_reason[reason])
        )
    out_console.print(table)
    for original, n in by_topic.most_common():
        out_console.print(f"  from {original}: {n}")
    for job, n in by_job.most_common():
        out_console.print(f"  job {job}: {n}")
    out_console.print(f"  oldest {summary['oldest']}  newest {summary['newest']}")


@dlq_app.command("show")
def dlq_show(
    reason: Annotated[str | None, _REASON] = None,
    sku: Annotated[str | None, _SKU] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="only this original topic")] = None,
    job: Annotated[str | None, _JOB] = None,
    limit: Annotated[int, typer.Option("--limit", help="show at most this many")] = 20,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Dead letters with their error headers and decoded events, filtered; replayed ones say when."""
    from streamer.ops.deadletters import dead_letter_view
    from streamer.runtime.replay import DeadLetterFilter

    settings = settings_from()
    wanted = DeadLetterFilter(reason=reason, key=sku, topic=topic, job=job)
    with fail_cleanly():
        letters = [r for r in _letters(settings) if wanted.matches(r)]
    replayed = _replayed(settings)
    shown = [dead_letter_view(r, replayed) for r in letters[:limit]]
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    for item in shown:
        mark = f"  [green]replayed {item['replayed_at']}[/green]" if item["replayed_at"] else ""
        out_console.rule(f"{item['reason']}  {item['original']}  sku={item['sku']}{mark}")
        out_console.print(f"  {item['message']}", markup=False)
        out_console.print(
            f"  attempts {item['attempts']}  first {item['first_failure']}  last {item['last_failure']}"
        )
        out_console.print_json(json.dumps(item["event"]))
    err_console.print(f"{len(shown)} shown of {len(letters)} matching")


@dlq_app.command("replay")
def dlq_replay(
    reason: Annotated[str | None, _REASON] = None,
    sku: Annotated[str | None, _SKU] = None,
    job: Annotated[str | None, _JOB] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="last failure at or after (ISO time, UTC)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="last failure at or before (ISO time, UTC)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be replayed, send nothing")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="then wait until the jobs that failed them have consumed the replayed messages "
            "(their committed positions pass them); exit 2 after --timeout",
        ),
    ] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="with --wait: seconds before giving up")
    ] = 120.0,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Send matching dead letters back to their original topic; each is replayed once."""
    from streamer.runtime.replay import DeadLetterFilter, replay_dead_letters

    settings = settings_from()
    wanted = DeadLetterFilter(
        reason=reason,
        key=sku,
        job=job,
        since_ms=_ms(since, "--since"),
        until_ms=_ms(until, "--until"),
    )
    with (
        fail_cleanly(),
        traced("streamer-dlq"),
        waiting(
            f"reading {settings.runtime.dlq_topic} and replaying through Kafka at "
            f"{settings.kafka.kafka_bootstrap}"
        ),
    ):
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
    if wait and not dry_run and result.records:
        with fail_cleanly(), waiting("waiting for the jobs to consume the replayed messages"):
            done = run(_consumed(settings.database.dsn, result, timeout_s))
        if not done:
            err_console.print(
                f"[yellow]timed out[/yellow] after {timeout_s:.0f} s: is the job's consumer "
                "running? (`streamer status`)"
            )
            raise typer.Exit(2)
        err_console.print("consumed by the jobs that failed them")


async def _consumed(dsn: str, result: Any, timeout_s: float) -> bool:
    """Whether every replayed message's consumer group committed past it within the time."""
    import asyncio
    import time

    from streamer.runtime.database import connect

    wanted = {
        (r.group_id, r.topic, part): end
        for r in result.records
        for (topic, part), end in result.end_offsets.items()
        if topic == r.topic
    }
    deadline = time.monotonic() + timeout_s
    async with connect(dsn) as conn:
        while True:
            rows = await conn.fetch(
                "SELECT group_id, topic, partition, next_offset FROM consumer_offsets"
                " WHERE group_id = ANY($1::text[])",
                sorted({g for g, _, _ in wanted}),
            )
            have = {(r["group_id"], r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if all(have.get(key, -1) >= end for key, end in wanted.items()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.3)


def status(
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id",
            help="answer for one request: its bulks and each event's outcome (from "
            "`streamer serve` or events carrying this request_id)",
        ),
    ] = None,
    partitions: Annotated[
        bool, typer.Option("--partitions", help="lag of every partition, not per topic")
    ] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Lag of the gallery consumer group, dead letters by reason, and a request's outcomes.

    With --request-id the request comes first; an id nothing was recorded under says so and
    exits 1."""
    from streamer.ops.status import collect_status

    settings = settings_from()
    with (
        fail_cleanly(),
        waiting(
            f"reading lag and dead letters from Kafka at {settings.kafka.kafka_bootstrap}"
            + (" and the request from PostgreSQL" if request_id is not None else "")
        ),
    ):
        report = collect_status(settings, request_id=request_id)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        if request_id is not None:
            _print_request(report["request"])
        _print_lag(report, partitions)
        if report["dead_letters"]:
            dl = Table("reason", "dead letters", title="dead letters")
            for reason, n in report["dead_letters"].items():
                dl.add_row(reason, str(n))
            out_console.print(dl)
        else:
            out_console.print("dead letters: none")
    if request_id is not None and not report["request"]["found"]:
        raise typer.Exit(1)


def _print_lag(report: dict[str, Any], partitions: bool) -> None:
    rows = report["lag"]
    if partitions:
        table = Table(
            "topic", "partition", "committed", "end", "lag", title=f"group {report['group_id']}"
        )
        for row in rows:
            committed = "-" if row["committed"] is None else str(row["committed"])
            table.add_row(
                row["topic"],
                str(row["partition"]),
                committed,
                str(row["high_watermark"]),
                str(row["lag"]),
            )
    else:
        table = Table("topic", "partitions", "lag", title=f"group {report['group_id']}")
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_topic.setdefault(row["topic"], []).append(row)
        for topic, parts in by_topic.items():
            table.add_row(topic, str(len(parts)), str(sum(p["lag"] for p in parts)))
        table.caption = "--partitions for each partition"
    table.columns[0].overflow = "fold"
    out_console.print(table)
    out_console.print(f"total lag: {report['total_lag']}")


def _print_request(request: dict[str, Any]) -> None:
    rid = request["request_id"]
    if not request["found"]:
        err_console.print(
            f"[yellow]no request {rid!r}:[/yellow] no bulk was taken in and no event outcome "
            "recorded under this request_id (check the id; outcomes are recorded once a "
            "consumer processed the events)",
            markup=True,
            highlight=False,
        )
        return
    out_console.print(f"[bold]request {rid}[/bold]", highlight=False)
    for bulk in request["bulks"]:
        state = "complete" if bulk["complete"] else bulk["state"]
        counts = ", ".join(f"{k} {v}" for k, v in bulk["counts"].items() if v)
        completed = (
            f", completed {bulk['completed_at']:%Y-%m-%d %H:%M:%S}" if bulk["completed_at"] else ""
        )
        out_console.print(
            f"  bulk {bulk['bulk_uuid']}: {state}, {bulk['processed']}/{bulk['accepted']} "
            f"processed ({counts or 'nothing yet'}), rejected {bulk['rejected']}{completed}",
            highlight=False,
        )
    if request["outcomes"]:
        req = Table("outcome", "events", title="events by outcome")
        for outcome, n in request["outcomes"].items():
            req.add_row(outcome, str(n))
        out_console.print(req)
    for failed in request["failed"]:
        out_console.print(
            f"  {failed['outcome']}: {failed['sku']} {failed['reason']} (event {failed['event_id']})",
            highlight=False,
        )
