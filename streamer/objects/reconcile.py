"""``streamer objects reconcile``: the bucket listed, the index repaired where notifications
were lost, and the galleries that use a repaired object re-checked.

Safe beside running consumers: a listed object is recorded with its LastModified as
event time and an object the index holds but the listing does not as deleted a few minutes
before the listing began (``OBSERVATION_SKEW``: this host's clock is not S3's), through the
same newer-only rule as notifications. So a
notification of a change made during the listing wins over what the listing saw.
The index's keys under the prefix are held in memory during the run: ``--prefix``
bounds a run over a very large bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamer.objectindex.records import OBSERVATION_SKEW, ObjectChange
from streamer.objectindex.store import live_under, read_objects
from streamer.objects.handler import ObjectsHandler, ObjectsPlan
from streamer.runtime.checkpoint import Checkpoint, NoOffsets
from streamer.runtime.connection import check_broker
from streamer.runtime.database import Database
from streamer.runtime.job import Sections
from streamer.runtime.publisher import Publisher
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
from streamer.storage.checks import check_bucket_with
from streamer.storage.clients import make_s3_client
from streamer.storage.errors import object_store_error
from streamer.storage.settings import S3Settings

__all__ = ["ReconcileReport", "reconcile"]

_BATCH = 1000


@dataclass
class ReconcileReport:
    prefix: str
    listed: int = 0
    missing: list[str] = field(default_factory=list)  # listed, not in the index (or deleted there)
    stale: list[str] = field(default_factory=list)  # listed with another ETag than indexed
    gone: list[str] = field(default_factory=list)  # indexed as present, not listed
    repaired: int = 0  # rows the index took (a concurrent newer notification wins)
    rechecks: int = 0

    def summary(self) -> dict[str, int | str]:
        return {
            "prefix": self.prefix,
            "listed": self.listed,
            "missing": len(self.missing),
            "stale": len(self.stale),
            "gone": len(self.gone),
            "repaired": self.repaired,
            "rechecks": self.rechecks,
        }


def _time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


async def reconcile(
    sections: Sections,
    handler: ObjectsHandler,
    *,
    prefix: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReconcileReport:
    s3, kafka = sections.section(S3Settings), sections.section(KafkaSettings)
    runtime = sections.section(RuntimeSettings)
    bucket = s3.s3_bucket
    if prefix is None:
        base = s3.s3_prefix.strip("/")
        prefix = f"{base}/" if base else ""
    report = ReconcileReport(prefix)
    started = datetime.now(UTC) - OBSERVATION_SKEW
    client = make_s3_client(s3)
    # Before anything is written: a wrong bucket would list empty and mark the index gone.
    await asyncio.to_thread(check_bucket_with, client, bucket, s3.s3_prefix)
    await asyncio.to_thread(check_broker, kafka)
    database = Database(sections.section(DatabaseSettings))
    publisher = Publisher(kafka)
    await database.start()
    publisher.start()
    checkpoint = Checkpoint(
        NoOffsets(database),
        publisher,
        dlq_topic=runtime.dlq_topic,
        dlq_max_value_bytes=runtime.dlq_max_value_bytes,
        delivery_timeout_s=kafka.delivery_timeout_ms / 1000,
    )
    try:
        async with database.acquire() as conn:
            indexed = {o.key: o.etag async for o in live_under(conn, bucket, prefix)}
        changes: list[ObjectChange] = []
        for page in _pages(client, bucket, prefix):
            keys = [obj["Key"] for obj in page.get("Contents", [])]
            async with database.acquire() as conn:
                known = await read_objects(conn, bucket, keys)
            for obj in page.get("Contents", []):
                key, etag = obj["Key"], str(obj["ETag"]).strip('"')
                report.listed += 1
                indexed.pop(key, None)
                row = known.get(key)
                if row is not None and not row.deleted and row.etag == etag:
                    continue
                (report.missing if row is None or row.deleted else report.stale).append(key)
                changes.append(
                    ObjectChange(
                        bucket, key, False, etag, int(obj["Size"]), _time(obj["LastModified"])
                    )
                )
            if len(changes) >= _BATCH:
                await _apply(checkpoint, handler, changes, report)
                changes = []
            if progress is not None:
                progress(report.listed)
        for key in sorted(indexed):
            report.gone.append(key)
            changes.append(ObjectChange(bucket, key, True, None, None, started))
        await _apply(checkpoint, handler, changes, report)
    finally:
        publisher.close()
        await database.stop()
    return report


def _pages(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """The listing's pages; a failure (the bucket deleted meanwhile, access revoked, the
    store down) ends the run as a streamer error that says which, never as a traceback."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        yield from pages
    except (ClientError, BotoCoreError) as exc:
        raise object_store_error(exc, f"LIST {prefix}", bucket=bucket) from exc


async def _apply(
    checkpoint: Checkpoint,
    handler: ObjectsHandler,
    changes: list[ObjectChange],
    report: ReconcileReport,
) -> None:
    """The objects job's own ``persist`` through the runtime's checkpoint: index rows
    written, re-checks published and acknowledged, then COMMIT (a listing has no offsets)."""
    if not changes:
        return
    plan = ObjectsPlan(changes=list(changes))
    output = await checkpoint.commit({}, partial(handler.persist, plan=plan))
    report.repaired += output.counts["indexed"]
    report.rechecks += output.counts["rechecks"]
