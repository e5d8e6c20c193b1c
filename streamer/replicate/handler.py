"""The replicator: ``GalleryUpdated`` in, the images of changed galleries at a destination store.

The data path of a batch, top to bottom (the runtime's checkpoint commits it):

1. ``decode``: decode every record (what cannot be read is dead-lettered) and keep each
   SKU's newest one: it carries the SKU's whole resulting gallery; load what this
   destination holds for the batch's SKUs and paths (versions, references, per-path
   records).
2. ``plan``: skip stale records; apply the image limit; the paths the records do not
   already vouch for are to be checked.
3. ``effects``: for each of those, HEAD source and destination and copy only what
   differs (``Copier.ensure``, bounded by ``STREAMER_REPLICA_CONCURRENCY``). A missing or
   oversized source object fails that image alone. Idempotent: a copy run again finds
   the destination identical (two HEADs, no copy).
4. ``persist`` (inside the checkpoint's transaction, under per-path advisory locks):
   re-check any path another worker changed meanwhile, then references, per-path
   records, versions; paths without references are marked for deletion. Returns the
   dead letters (one per failed image, with its path).

After the commit a background task, supervised by the runtime, deletes what was marked
(``deletes.take_deletes``). Destination outages raise ``ReplicaUnavailable`` and pause
the worker on the ``replica`` circuit; source outages on ``s3``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from confluent_kafka import Message

from streamer.contract.codec import Codec
from streamer.contract.errors import ImageInvalid, InvalidEvent
from streamer.contract.topics import TopicSettings
from streamer.errors import DependencyUnavailable, StreamerError
from streamer.replicate.copier import Copier, Ensured, Failed
from streamer.replicate.deletes import take_deletes
from streamer.replicate.errors import ReplicaUnavailable
from streamer.replicate.event import decode_gallery
from streamer.replicate.metrics import ReplicaMetrics
from streamer.replicate.repository import ReplicaRepository
from streamer.replicate.rules import (
    Keyed,
    ObjectRow,
    is_recorded,
    newest_per_sku,
    ref_change,
    select_images,
)
from streamer.replicate.settings import ReplicaSettings
from streamer.replicate.stores import make_copier
from streamer.runtime import tracing
from streamer.runtime.checkpoint import Transaction
from streamer.runtime.deadletters import DeadLetter
from streamer.runtime.handler import Batch, HandlerBase, HandlerContext, Output
from streamer.storage.checks import check_bucket_at_start
from streamer.storage.settings import S3Settings

__all__ = ["ReplicaPlan", "ReplicateHandler"]

log = logging.getLogger(__name__)

# How often pending deletes are looked for when no batch has marked any.
DELETE_POLL_S = 5.0


@dataclass(frozen=True)
class _Decoded:
    messages: int
    letters: list[DeadLetter]
    newest: dict[str, Keyed[Message]]
    superseded: int
    # Per SKU, the paths of its superseded records: a batch that copied them and never
    # committed (a crash, a fencing) leaves them at the destination with no reference.
    passed: dict[str, set[str]]
    versions: dict[str, int]
    refs: dict[str, set[str]]
    observed: dict[str, ObjectRow]


@dataclass(frozen=True)
class ReplicaPlan:
    """What the batch copies and records; never changed once made."""

    letters: list[DeadLetter]
    events: Counter[str]
    dropped_limit: int = 0
    # sku -> (its newest record, the paths it keeps)
    changes: dict[str, tuple[Keyed[Message], list[str]]] = field(default_factory=dict)
    refs: dict[str, set[str]] = field(default_factory=dict)
    passed: dict[str, set[str]] = field(default_factory=dict)
    recorded: dict[str, Ensured] = field(default_factory=dict)  # vouched for by the records
    to_check: list[str] = field(default_factory=list)
    observed: dict[str, ObjectRow] = field(default_factory=dict)


@dataclass(frozen=True)
class Copied:
    """What ``effects`` did: the paths now at the destination, and those that failed."""

    ensured: dict[str, Ensured] = field(default_factory=dict)
    failed: dict[str, Failed] = field(default_factory=dict)


@dataclass(frozen=True)
class _Recorded:
    """What ``persist`` recorded, for the metrics and the deleter."""

    images: Counter[str]
    failures: Counter[str]
    marked: list[str]


def _gen(row: ObjectRow | None) -> int:
    return row.gen if row is not None else 0


def moved(seen: ObjectRow | None, now: ObjectRow | None) -> bool:
    """Whether a path may have changed at the destination since ``seen`` was read."""
    deleting = any(r is not None and r.state == "deleting" for r in (seen, now))
    return deleting or _gen(seen) != _gen(now)


class ReplicateHandler(HandlerBase):
    """The replicator, as a handler on the runtime (``streamer replicate``)."""

    name = "replicate"
    dependencies = ("s3", "replica")

    def __init__(
        self, settings: ReplicaSettings, topics: TopicSettings, s3: S3Settings, *, codec: Codec
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.topics = (topics.outcome_topic,)
        self.codec = codec
        self.limit = settings.replica_image_limit
        self.destination = settings.destination(s3)

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.metrics = ReplicaMetrics(ctx.registry)
        if self.limit != 0:  # 0: replication off, neither store is asked
            await check_bucket_at_start(self.s3)
            await check_bucket_at_start(self.settings.store(self.s3), self.settings.names())
        self.copier: Copier = make_copier(self.settings, self.s3, self.metrics)
        self.repo = ReplicaRepository(ctx.database, self.destination)
        self._wake = asyncio.Event()
        self._wake.set()  # a round at start takes what a previous worker left pending
        ctx.spawn("replica-deletes", self._delete_loop)

    async def stop(self) -> None:
        self.copier.close()

    # -- 1. decode, and what the destination holds -------------------------------------

    async def decode(self, batch: Batch) -> _Decoded:
        items: list[Keyed[Message]] = []
        letters: list[DeadLetter] = []
        for msg in batch.messages:
            try:
                gallery = decode_gallery(self.codec, msg.value())
            except StreamerError as exc:
                if exc.retriable:
                    raise
                letters.append(self.ctx.dead_letter(msg, exc))
                continue
            key = msg.key()
            if key is None or key.decode("utf-8", "replace") != gallery.sku:
                error = InvalidEvent(
                    f"message key {key[:80] if key else None!r} is not the SKU {gallery.sku!r}",
                    reason="key_mismatch",
                )
                letters.append(self.ctx.dead_letter(msg, error, details={"sku": gallery.sku}))
                continue
            items.append(Keyed(gallery, msg))
        newest, superseded = newest_per_sku(items)
        passed: dict[str, set[str]] = {}
        for keyed in superseded:
            paths = passed.setdefault(keyed.gallery.sku, set())
            paths.update(img.file_path for img in keyed.gallery.images)
        versions: dict[str, int] = {}
        refs: dict[str, set[str]] = {}
        observed: dict[str, ObjectRow] = {}
        if newest and self.limit != 0:
            with tracing.span("replica state read", {"streamer.skus": len(newest)}):
                versions, refs = await self.ctx.call(
                    "postgres", partial(self.repo.load_skus, list(newest))
                )
                paths_in_play = {img.file_path for k in newest.values() for img in k.gallery.images}
                held = set().union(*(refs.get(sku, set()) for sku in newest))
                observed = await self.ctx.call(
                    "postgres", partial(self.repo.load_objects, list(paths_in_play | held))
                )
        return _Decoded(
            len(batch), letters, newest, len(superseded), passed, versions, refs, observed
        )

    # -- 2. plan -------------------------------------------------------------------------

    def plan(self, decoded: _Decoded) -> ReplicaPlan:
        events: Counter[str] = Counter()
        events["superseded"] += decoded.superseded
        events["dead_lettered"] += len(decoded.letters)
        if self.limit == 0:
            events["off"] += len(decoded.newest)
            return ReplicaPlan(list(decoded.letters), events)
        changes: dict[str, tuple[Keyed[Message], list[str]]] = {}
        wanted: dict[str, set[str]] = {}
        dropped = 0
        for sku, keyed in decoded.newest.items():
            if keyed.gallery.version < decoded.versions.get(sku, keyed.gallery.version):
                events["stale"] += 1
                continue
            kept, dropped_here = select_images(keyed.gallery, self.limit)
            dropped += dropped_here
            changes[sku] = (keyed, [img.file_path for img in kept])
            for img in kept:
                wanted.setdefault(img.file_path, set()).add(img.etag)
        recorded: dict[str, Ensured] = {}
        to_check: list[str] = []
        for path, etags in wanted.items():
            row = decoded.observed.get(path)
            if row is not None and is_recorded(row, etags):
                recorded[path] = Ensured("recorded", row.etag or "", 0)
            else:
                to_check.append(path)
        return ReplicaPlan(
            list(decoded.letters),
            events,
            dropped,
            changes,
            decoded.refs,
            decoded.passed,
            recorded,
            to_check,
            decoded.observed,
        )

    # -- 3. copy what differs --------------------------------------------------------------

    async def effects(self, plan: ReplicaPlan) -> Copied:
        with tracing.span("replica ensure", {"streamer.paths": len(plan.to_check)}):
            results = await asyncio.gather(
                *(self.copier.ensure(p, self.ctx.call) for p in plan.to_check),
                return_exceptions=True,
            )
        copied = Copied(dict(plan.recorded))
        for path, result in zip(plan.to_check, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            if isinstance(result, Failed):
                copied.failed[path] = result
            else:
                copied.ensured[path] = result
        return copied

    # -- 4. record, inside the checkpoint's transaction ---------------------------------------

    async def persist(self, tx: Transaction, plan: ReplicaPlan, effects: Copied) -> Output:
        conn = tx.conn
        letters = list(plan.letters)
        events = Counter(plan.events)
        images: Counter[str] = Counter({"dropped_limit": plan.dropped_limit})
        failures: Counter[str] = Counter()
        added: list[tuple[str, str]] = []
        removed: list[tuple[str, str]] = []
        removed_paths: set[str] = set()
        passed_paths: set[str] = set()
        versions: dict[str, int] = {}
        ensured, failed = dict(effects.ensured), effects.failed
        for sku, (keyed, paths) in plan.changes.items():
            change = ref_change(plan.refs.get(sku, set()), paths, failed)
            added += [(sku, p) for p in sorted(change.added)]
            removed += [(sku, p) for p in sorted(change.removed)]
            removed_paths |= change.removed
            passed_paths |= plan.passed.get(sku, set()) - set(paths)
            versions[sku] = keyed.gallery.version
            events["applied"] += 1
            for path in paths:
                if path in failed:
                    f = failed[path]
                    images["failed"] += 1
                    failures[f.reason] += 1
                    letters.append(
                        self.ctx.dead_letter(
                            keyed.item,
                            ImageInvalid(f.message, reason=f.reason),
                            details={"sku": sku, "file_path": path},
                        )
                    )
                else:
                    images[ensured[path].result] += 1
        marked: list[str] = []
        if versions:
            await self.repo.lock(conn, shared=ensured, exclusive=removed_paths | passed_paths)
            now = await self.repo.objects(conn, ensured)
            for path in [p for p in ensured if moved(plan.observed.get(p), now.get(p))]:
                # Another worker changed this path since the batch looked: check it again,
                # locked (idempotent, as every copy is).
                result = await self.copier.ensure(path, self.ctx.call)
                if isinstance(result, Failed):
                    raise ReplicaUnavailable(
                        f"{path} changed at the source while this batch was written; retrying",
                        retry_after_s=0.0,
                    )
                ensured[path] = result
            await self.repo.set_refs(conn, added, removed)
            marked = await self.repo.mark_unreferenced(conn, removed_paths)
            # Paths only superseded records held may have been copied by an attempt of this
            # batch that never committed: any no SKU references is deleted (a no-op if absent).
            marked += await self.repo.mark_extra(conn, passed_paths - ensured.keys())
            await self.repo.mark_present(
                conn,
                {p: (e.etag, e.size) for p, e in ensured.items() if e.result != "recorded"},
            )
            await self.repo.set_versions(conn, versions)
        return Output(letters=letters, counts=events, detail=_Recorded(images, failures, marked))

    def committed(self, plan: ReplicaPlan, effects: Copied, output: Output) -> None:
        recorded: _Recorded = output.detail
        for outcome, n in output.counts.items():
            self.metrics.events.labels(outcome).inc(n)
        for result, n in recorded.images.items():
            if n:
                self.metrics.images.labels(result).inc(n)
        for reason, n in recorded.failures.items():
            self.metrics.failures.labels(reason).inc(n)
        if recorded.marked:
            self._wake.set()

    # -- deletes, after the commit ---------------------------------------------------------

    async def _delete_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=DELETE_POLL_S)
            self._wake.clear()
            try:
                while True:
                    deleted, left = await take_deletes(
                        self.ctx.database, self.repo, self.copier, self.ctx.call
                    )
                    if deleted:
                        log.info("deleted %d objects no gallery uses; %d pending", deleted, left)
                    if not deleted or not left:
                        break
            except DependencyUnavailable as exc:
                log.warning("pending deletes wait for the destination: %s", exc)
