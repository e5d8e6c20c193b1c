"""``streamer replicate verify``: the destination compared with what it should hold, and repaired.

What it should hold is what this job recorded from the outcome topic: every path some
SKU's gallery references (``replica_refs``), with the bytes the source bucket has now.
The gallery job's tables are not read: they belong to another job, and the outcome
topic is the contract between the two. The source and the destination are each listed
once (ListObjectsV2, 1,000 keys a request); only objects whose ETags differ are HEADed
for the source ETag a copy recorded (multipart copies have ETags of their own).

- missing: referenced, in the source, absent at the destination;
- stale: at the destination with other bytes than the source has now;
- extra: at the destination under the prefix, referenced by no gallery;
- source_missing: referenced, but gone from the source (reported; nothing to copy).

``repair`` copies what is missing or stale and deletes what is extra, under the same
per-path locks and records as the running replicators, so it is safe beside them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from streamer.replicate.copier import Call, Copier, Ensured, Failed
from streamer.replicate.deletes import take_deletes
from streamer.replicate.metrics import ReplicaMetrics
from streamer.replicate.repository import ReplicaRepository
from streamer.replicate.rules import is_identical
from streamer.replicate.settings import ReplicaSettings
from streamer.replicate.stores import make_copier
from streamer.runtime.database import Database
from streamer.runtime.metrics import new_registry
from streamer.runtime.retry import RetryPolicy, retry_async
from streamer.runtime.settings import DatabaseSettings, RuntimeSettings
from streamer.storage.checks import check_bucket_with
from streamer.storage.settings import S3Settings

__all__ = ["Progress", "VerifyReport", "verify_replica"]

# (phase, done, total or None): what a caller shows as progress.
Progress = Callable[[str, int, int | None], None]
_REPAIR_CHUNK = 100


@dataclass
class VerifyReport:
    destination: str
    prefix: str
    expected: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    source_missing: list[str] = field(default_factory=list)
    copied: int = 0
    deleted: int = 0
    repair_failures: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.stale or self.extra or self.source_missing)

    def summary(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "prefix": self.prefix,
            "expected": self.expected,
            "ok": self.ok,
            "missing": len(self.missing),
            "stale": len(self.stale),
            "extra": len(self.extra),
            "source_missing": len(self.source_missing),
            "copied": self.copied,
            "deleted": self.deleted,
            "repair_failures": self.repair_failures,
        }


def _normalised(prefix: str) -> str:
    return "/" + prefix.strip().lstrip("/")


async def verify_replica(
    replica: ReplicaSettings,
    s3: S3Settings,
    database: DatabaseSettings,
    runtime: RuntimeSettings,
    *,
    prefix: str = "/",
    repair: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    show = progress or (lambda _phase, _done, _total: None)
    path_prefix = _normalised(prefix)
    report = VerifyReport(replica.destination(s3), path_prefix)
    copier = make_copier(replica, s3, ReplicaMetrics(new_registry()))
    policy = RetryPolicy.from_settings(runtime)

    async def call(dependency: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await retry_async(fn, dependency=dependency, policy=policy)

    try:
        # Before anything is read or repaired: a wrong bucket would look empty or all missing.
        await asyncio.to_thread(check_bucket_with, copier.source, s3.s3_bucket, s3.s3_prefix)
        await asyncio.to_thread(
            check_bucket_with,
            copier.replica,
            replica.bucket(),
            replica.replica_prefix,
            replica.names(),
        )
        async with Database(database) as db:
            repo = ReplicaRepository(db, report.destination)
            async with db.acquire() as conn:
                expected = await repo.expected(conn, path_prefix)
            report.expected = len(expected)
            show("recorded paths", len(expected), len(expected))
            source = await _listed(copier.list_source, path_prefix, "source listed", show)
            held = await _listed(copier.list_replica, path_prefix, "destination listed", show)
            to_head: list[str] = []
            for path in sorted(expected):
                if path not in source:
                    report.source_missing.append(path)
                elif path not in held:
                    report.missing.append(path)
                elif held[path] == source[path]:
                    report.ok += 1
                else:
                    to_head.append(path)
            for path, head in zip(
                to_head,
                await asyncio.gather(
                    *(call("replica", partial(copier.head_replica, p)) for p in to_head)
                ),
                strict=True,
            ):
                if is_identical(head, source[path]):
                    report.ok += 1
                else:
                    report.stale.append(path)
            show("checked", report.ok + len(report.stale), len(expected))
            report.extra = sorted(held.keys() - expected.keys())
            if repair:
                await _repair(report, db, repo, copier, call, show)
    finally:
        copier.close()
    return report


async def _listed(
    lister: Callable[[str], Iterator[tuple[str, str, int]]],
    path_prefix: str,
    phase: str,
    show: Progress,
) -> dict[str, str]:
    def collect() -> dict[str, str]:
        found: dict[str, str] = {}
        for path, etag, _size in lister(path_prefix):
            found[path] = etag
            if len(found) % 1000 == 0:
                show(phase, len(found), None)
        return found

    found = await asyncio.to_thread(collect)
    show(phase, len(found), len(found))
    return found


async def _repair(
    report: VerifyReport,
    db: Database,
    repo: ReplicaRepository,
    copier: Copier,
    call: Call,
    show: Progress,
) -> None:
    todo = report.missing + report.stale
    for start in range(0, len(todo), _REPAIR_CHUNK):
        chunk = todo[start : start + _REPAIR_CHUNK]
        async with db.acquire() as conn, conn.transaction():
            await repo.lock(conn, shared=chunk, exclusive=())
            results = await asyncio.gather(*(copier.ensure(p, call) for p in chunk))
            held: dict[str, tuple[str, int]] = {}
            for path, result in zip(chunk, results, strict=True):
                if isinstance(result, Failed):
                    report.repair_failures[path] = f"{result.reason}: {result.message}"
                    continue
                assert isinstance(result, Ensured)
                held[path] = (result.etag, result.size)
                report.copied += result.result == "copied"
            await repo.mark_present(conn, held)
        show("repaired", start + len(chunk), len(todo))
    if report.extra:
        async with db.acquire() as conn, conn.transaction():
            await repo.lock(conn, shared=(), exclusive=report.extra)
            await repo.mark_extra(conn, report.extra)
        while True:
            deleted, left = await take_deletes(db, repo, copier, call)
            report.deleted += deleted
            show("deleted", report.deleted, report.deleted + left)
            if not deleted or not left:
                break
