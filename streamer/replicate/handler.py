"""The replicator: ``GalleryUpdated`` in, the images of changed galleries at a destination store.

The data path of a batch, top to bottom (the runtime's checkpoint commits it):

1. ``prepare``: decode every record (what cannot be read is dead-lettered) and keep each
   SKU's newest one: it carries the SKU's whole resulting gallery.
2. ``plan``: load what this destination holds for the batch's SKUs and paths (versions,
   references, per-path records); skip stale records; apply the image limit; for every
   path the records do not already vouch for, HEAD source and destination and copy
   only what differs (``Copier.ensure``, bounded by ``STREAMER_REPLICA_CONCURRENCY``).
   A missing or oversized source object fails that image alone.
3. ``write`` (inside the checkpoint's transaction, under per-path advisory locks):
   re-check any path another worker changed meanwhile, then references, per-path
   records, versions; paths without references are marked for deletion. Returns the
   dead letters (one per failed image, with its path).

After the commit a background task deletes what was marked (``deletes.take_deletes``).
Copies happen before the commit, so a crash re-runs them: they find the destination
identical (two HEADs, no copy). Destination outages raise ``ReplicaUnavailable`` and
pause the worker on the ``replica`` circuit; source outages on ``s3``.
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
from streamer.contract.topics import TopicSettings
from streamer.errors import DependencyUnavailable, ImageInvalid, InvalidEvent, StreamerError
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
from streamer.runtime.handler import Batch, HandlerContext, Output
from streamer.storage.settings import S3Settings

__all__ = ["ReplicaPlan", "ReplicateHandler"]

log = logging.getLogger(__name__)

# How often pending deletes are looked for when no batch has marked any.
DELETE_POLL_S = 5.0


@dataclass
class _Prepared:
    messages: int
    letters: list[DeadLetter]
    newest: dict[str, Keyed[Message]]
    superseded: int
    # Per SKU, the paths of its superseded records: a batch that copied them and never
    # committed (a crash, a fencing) leaves them at the destination with no reference.
    passed: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class ReplicaPlan:
    """What ``write`` records, and what the batch did (for metrics)."""

    letters: list[DeadLetter] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    added: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    removed_paths: set[str] = field(default_factory=set)
    passed_paths: set[str] = field(default_factory=set)
    ensured: dict[str, Ensured] = field(default_factory=dict)
    observed: dict[str, ObjectRow] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    marked: list[str] = field(default_factory=list)


def _gen(row: ObjectRow | None) -> int:
    return row.gen if row is not None else 0


def moved(seen: ObjectRow | None, now: ObjectRow | None) -> bool:
    """Whether a path may have changed at the destination since ``seen`` was read."""
    deleting = any(r is not None and r.state == "deleting" for r in (seen, now))
    return deleting or _gen(seen) != _gen(now)


class ReplicateHandler:
    """The replicator, as a handler on the runtime (``streamer replicate``)."""

    name = "replicate"
    dependencies = ("s3", "replica")

    def __init__(
        self, settings: ReplicaSettings, topics: TopicSettings, s3: S3Settings, *, codec: Codec
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.group_id = settings.replica_group_id
        self.topics = (topics.outcome_topic,)
        self.codec = codec
        self.limit = settings.replica_image_limit
        self.destination = settings.destination(s3)
        self.totals: Counter[str] = Counter()
        self._deleter: asyncio.Task[None] | None = None

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.metrics = ReplicaMetrics(ctx.registry)
        self.copier: Copier = make_copier(self.settings, self.s3, self.metrics)
        self.repo = ReplicaRepository(ctx.database, self.destination)
        self._wake = asyncio.Event()
        self._wake.set()  # a round at start takes what a previous worker left pending
        self._deleter = asyncio.create_task(self._delete_loop(), name="replica-deletes")

    async def stop(self) -> None:
        if self._deleter is not None:
            self._deleter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deleter
        self.copier.close()

    # -- 1. decode ---------------------------------------------------------------------

    async def prepare(self, batch: Batch) -> _Prepared:
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
                letters.append(self.ctx.dead_letter(msg, error, sku=gallery.sku))
                continue
            items.append(Keyed(gallery, msg))
        newest, superseded = newest_per_sku(items)
        passed: dict[str, set[str]] = {}
        for keyed in superseded:
            paths = passed.setdefault(keyed.gallery.sku, set())
            paths.update(img.file_path for img in keyed.gallery.images)
        return _Prepared(len(batch), letters, newest, len(superseded), passed)

    # -- 2. look up, copy ----------------------------------------------------------------

    async def plan(self, prepared: _Prepared) -> ReplicaPlan:
        self._surface_deleter_failure()
        plan = ReplicaPlan(letters=list(prepared.letters))
        plan.events["superseded"] += prepared.superseded
        plan.events["dead_lettered"] += len(prepared.letters)
        if self.limit == 0:
            plan.events["off"] += len(prepared.newest)
            return plan
        if not prepared.newest:
            return plan
        with tracing.span("replica state read", {"streamer.skus": len(prepared.newest)}):
            versions, refs = await self.ctx.call(
                "postgres", partial(self.repo.load_skus, list(prepared.newest))
            )
        changes: dict[str, tuple[Keyed[Message], list[str]]] = {}
        wanted: dict[str, set[str]] = {}
        for sku, keyed in prepared.newest.items():
            if keyed.gallery.version < versions.get(sku, keyed.gallery.version):
                plan.events["stale"] += 1
                continue
            kept, dropped = select_images(keyed.gallery, self.limit)
            plan.images["dropped_limit"] += dropped
            changes[sku] = (keyed, [img.file_path for img in kept])
            for img in kept:
                wanted.setdefault(img.file_path, set()).add(img.etag)
        held = set().union(*(refs.get(sku, set()) for sku in changes))
        observed = await self.ctx.call(
            "postgres", partial(self.repo.load_objects, list(wanted.keys() | held))
        )
        plan.observed = observed
        failed: dict[str, Failed] = {}
        to_check = []
        for path, etags in wanted.items():
            row = observed.get(path)
            if row is not None and is_recorded(row, etags):
                plan.ensured[path] = Ensured("recorded", row.etag or "", 0)
            else:
                to_check.append(path)
        with tracing.span("replica ensure", {"streamer.paths": len(to_check)}):
            results = await asyncio.gather(
                *(self.copier.ensure(p, self.ctx.call) for p in to_check), return_exceptions=True
            )
        for path, result in zip(to_check, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            if isinstance(result, Failed):
                failed[path] = result
            else:
                plan.ensured[path] = result
        for sku, (keyed, paths) in changes.items():
            change = ref_change(refs.get(sku, set()), paths, failed)
            plan.added += [(sku, p) for p in sorted(change.added)]
            plan.removed += [(sku, p) for p in sorted(change.removed)]
            plan.removed_paths |= change.removed
            plan.passed_paths |= prepared.passed.get(sku, set()) - set(paths)
            plan.versions[sku] = keyed.gallery.version
            plan.events["applied"] += 1
            for path in paths:
                if path in failed:
                    f = failed[path]
                    plan.images["failed"] += 1
                    plan.failures[f.reason] += 1
                    plan.letters.append(
                        self.ctx.dead_letter(
                            keyed.item,
                            ImageInvalid(f.message, reason=f.reason),
                            sku=sku,
                            details={"file_path": path},
                        )
                    )
                else:
                    plan.images[plan.ensured[path].result] += 1
        return plan

    # -- 3. record, inside the checkpoint's transaction ---------------------------------------

    async def write(self, tx: Transaction, plan: ReplicaPlan) -> Output:
        conn = tx.conn
        output = Output(letters=plan.letters, counts=Counter(plan.events))
        if not plan.versions:
            return output
        await self.repo.lock(
            conn, shared=plan.ensured, exclusive=plan.removed_paths | plan.passed_paths
        )
        now = await self.repo.objects(conn, plan.ensured)
        for path in [p for p in plan.ensured if moved(plan.observed.get(p), now.get(p))]:
            # Another worker changed this path since ``plan`` looked: check it again, locked.
            result = await self.copier.ensure(path, self.ctx.call)
            if isinstance(result, Failed):
                raise ReplicaUnavailable(
                    f"{path} changed at the source while this batch was written; retrying",
                    retry_after_s=0.0,
                )
            plan.ensured[path] = result
        await self.repo.set_refs(conn, plan.added, plan.removed)
        plan.marked = await self.repo.mark_unreferenced(conn, plan.removed_paths)
        # Paths only superseded records held may have been copied by an attempt of this
        # batch that never committed: any no SKU references is deleted (a no-op if absent).
        plan.marked += await self.repo.mark_extra(conn, plan.passed_paths - plan.ensured.keys())
        await self.repo.mark_present(
            conn,
            {p: (e.etag, e.size) for p, e in plan.ensured.items() if e.result != "recorded"},
        )
        await self.repo.set_versions(conn, plan.versions)
        return output

    def committed(self, plan: ReplicaPlan, output: Output) -> None:
        for outcome, n in plan.events.items():
            self.metrics.events.labels(outcome).inc(n)
        for result, n in plan.images.items():
            self.metrics.images.labels(result).inc(n)
        for reason, n in plan.failures.items():
            self.metrics.failures.labels(reason).inc(n)
        self.totals.update(plan.images)
        if plan.marked:
            self._wake.set()

    # -- deletes, after the commit ---------------------------------------------------------

    def _surface_deleter_failure(self) -> None:
        """A deleter that died of an unexpected error stops the worker instead of idling."""
        if self._deleter is not None and self._deleter.done() and not self._deleter.cancelled():
            self._deleter.result()

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
