"""The gallery job: product and media events in, ETag-checked gallery state and outcomes out.

The data path of a batch, top to bottom (the runtime's checkpoint commits it):

1. ``decode``: decode and validate every message (what cannot be read becomes a
   dead letter); load the stored state of the batch's SKUs and the event ids seen
   before and, at the same time, look up the ETags of every distinct object the
   events name (as if nothing were stored: a superset of what the fold needs).
2. ``plan``: fold each SKU's events in consume order onto its stored state and
   diff the result; derive the outcome rows, request counts and dead letters.
3. ``persist`` (inside the checkpoint's transaction): the gallery rows of every
   changed SKU (a SKU whose rows the database refuses is dead-lettered alone),
   the event outcomes; returns the dead letters and ``GalleryUpdated`` events.

The job has no effects outside PostgreSQL and Kafka. It looks ahead: the runtime decodes
batch N+1 while batch N commits, so N+1's state read may predate N's commit. Its reads
(``states`` by SKU, ``seen`` by event id) and what ``persist`` wrote (same kinds) let the
runtime lay N's writes over N+1's reads before N+1 is planned: the fold always starts from
what is stored. The ETag look-up does not depend on the stored state, so it is never short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message

from streamer.contract.codec import Codec
from streamer.contract.errors import InvalidEvent
from streamer.contract.events import EventType
from streamer.contract.lean import (
    RECHECK,
    GalleryInput,
    LeanRecheck,
    PendingMedia,
    lean_fingerprint,
)
from streamer.contract.topics import TopicSettings
from streamer.errors import StreamerError
from streamer.gallery.diff import SkuDiff, diff
from streamer.gallery.etags import EtagSource, make_etag_source
from streamer.gallery.fold import EventOutcome, EventResult, FoldRules, fold_batch, keys_in_play
from streamer.gallery.metrics import GalleryMetrics
from streamer.gallery.outcomes import gallery_updated
from streamer.gallery.repository import (
    GalleryRepository,
    OutcomeRow,
    RowCounts,
    apply_diffs,
    record_outcomes,
)
from streamer.gallery.resync import digest_key, pending_media, settle
from streamer.gallery.settings import GallerySettings
from streamer.gallery.state import NOTHING_STORED, ObjectInfo, SeenEvent, SkuState
from streamer.objectindex.store import read_objects_locked
from streamer.runtime import tracing
from streamer.runtime.checkpoint import Transaction
from streamer.runtime.deadletters import DeadLetter
from streamer.runtime.errors import DatabaseDataError
from streamer.runtime.handler import Batch, HandlerBase, HandlerContext, Output, OutputMessage
from streamer.storage.checks import check_bucket_at_start
from streamer.storage.keys import s3_key
from streamer.storage.settings import S3Settings
from streamer.tracking.model import TrackedOutcome, tracked_item
from streamer.tracking.store import record_outcomes as record_tracked

__all__ = ["BatchReport", "GalleryHandler", "GalleryPlan"]

log = logging.getLogger(__name__)

Event = GalleryInput
_MEDIA = EventType.MEDIA.value


@dataclass
class BatchReport:
    """What a batch did, for its metrics."""

    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    outcome_events: int = 0
    rows_written: int = 0


@dataclass
class _Item:
    msg: Message
    event: Event


@dataclass
class _Decoded:
    messages: int
    decode_letters: list[DeadLetter]
    items: list[_Item]  # in consume order
    by_sku: dict[str, list[_Item]]
    states: dict[str, SkuState]
    seen: dict[str, SeenEvent]
    objects: dict[str, ObjectInfo | None]  # by file path

    @property
    def reads(self) -> dict[str, dict[Any, Any]]:
        """What the runtime lays the previous batch's writes over (see the module)."""
        return {"states": self.states, "seen": self.seen}


@dataclass(frozen=True)
class GalleryPlan:
    """Everything ``persist`` needs, derived from the fold. Never changed once made: a SKU
    the database refuses makes ``persist`` derive another plan without it."""

    messages: int
    decode_letters: list[DeadLetter]
    results: dict[str, list[tuple[_Item, EventResult]]]
    diffs: dict[str, SkuDiff]
    finals: dict[str, SkuState]
    images: Counter[str]
    unknown_roles: int = 0
    letters: list[DeadLetter] = field(default_factory=list)
    outcome_rows: list[OutcomeRow] = field(default_factory=list)
    request_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    tracked: list[TrackedOutcome] = field(default_factory=list)  # items of intake bulks
    report: BatchReport = field(default_factory=BatchReport)


@dataclass(frozen=True)
class _Persisted:
    """What ``persist`` did: the plan it carried out (without refused SKUs) and the rows."""

    plan: GalleryPlan
    rows: RowCounts


class GalleryHandler(HandlerBase):
    """The gallery sync, as a handler on the runtime (``streamer consume``)."""

    name = "gallery"
    dependencies = ("s3",)
    look_ahead = True

    def __init__(
        self,
        settings: GallerySettings,
        topics: TopicSettings,
        s3: S3Settings,
        *,
        codec: Codec,
        etags: EtagSource | None = None,
    ) -> None:
        self.settings = settings
        self.topics = (topics.product_topic, topics.media_topic)
        self.outcome_topic = topics.outcome_topic
        self.media_topic = topics.media_topic
        self.s3 = s3
        self.s3_prefix = s3.s3_prefix
        self.codec = codec
        self._etags = etags
        self.rules = FoldRules(
            max_image_bytes=settings.max_image_bytes,
            image_limit=settings.image_limit,
            verify_producer_etag=settings.verify_producer_etag,
        )
        self._topic_types = {
            topics.product_topic: EventType.PRODUCT,
            topics.media_topic: EventType.MEDIA,
        }
        self._digest_key = digest_key(self.rules)

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.metrics = GalleryMetrics(ctx.registry)
        self.repository = GalleryRepository(ctx.database)
        if self.settings.image_limit != 0:  # 0: gallery sync off, S3 is never asked
            await check_bucket_at_start(self.s3)
        self.etags = self._etags or make_etag_source(
            self.s3, self.settings.etag_source, self.metrics, database=ctx.database
        )

    async def stop(self) -> None:
        await self.etags.close()

    # -- 1. decode: messages, state, ETags -------------------------------------------------------

    def _letter(self, msg: Message, error: StreamerError, sku: str | None = None) -> DeadLetter:
        return self.ctx.dead_letter(msg, error, details={"sku": sku} if sku else None)

    def _decode(
        self, messages: Sequence[Message], consumed: Counter[tuple[str, str]]
    ) -> tuple[list[_Item], list[DeadLetter]]:
        items: list[_Item] = []
        letters: list[DeadLetter] = []
        for msg in messages:
            topic = msg.topic() or ""
            pending = (
                pending_media(self.codec, msg.value(), msg.key(), self._digest_key)
                if topic == self.media_topic
                else None
            )
            if pending is not None:
                consumed[(topic, _MEDIA)] += 1
                items.append(_Item(msg, pending))
                continue
            try:
                event = self.codec.decode_gallery_input(msg.value())
            except StreamerError as exc:
                if exc.retriable:
                    raise
                consumed[(topic, "undecodable")] += 1
                letters.append(self._letter(msg, exc))
                continue
            # A re-check travels on the media topic, beside the events it re-applies.
            kind = EventType.MEDIA if isinstance(event, LeanRecheck) else event.type
            type_name = RECHECK if isinstance(event, LeanRecheck) else event.type.value
            consumed[(topic, type_name)] += 1
            expected = self._topic_types.get(topic)
            key = msg.key()
            try:
                key_text = key.decode("utf-8") if key is not None else None
            except UnicodeDecodeError:
                key_text = None
            if expected is not None and kind is not expected:
                err: StreamerError = InvalidEvent(
                    f"{type_name} on topic {topic}, which carries {expected.value}",
                    reason="wrong_topic",
                )
                letters.append(self._letter(msg, err, event.sku))
            elif key_text is None or key_text.strip() != event.sku:
                shown = repr(key[:80]) if key is not None else "no key"
                err = InvalidEvent(
                    f"message key {shown} is not the event's SKU {event.sku!r} in UTF-8",
                    reason="key_mismatch",
                )
                letters.append(self._letter(msg, err, event.sku))
            else:
                items.append(_Item(msg, event))
        return items, letters

    def _settle(
        self,
        items: list[_Item],
        states: Mapping[str, SkuState],
        letters: list[DeadLetter],
        consumed: Counter[tuple[str, str]],
    ) -> tuple[list[_Item], set[str]]:
        """Media events decoded up to their images, once the stored state is known: one
        whose payload made the stored images stays so (its objects are the stored images'),
        any other is decoded in full now, as any event is. Returns the items and the paths
        whose objects the fold may now need besides those of fully decoded events."""
        settled: list[_Item] = []
        paths: set[str] = set()
        for item in items:
            event = item.event
            if not isinstance(event, PendingMedia):
                settled.append(item)
                continue
            try:
                now, needed = settle(event, states[event.sku], self.rules)
            except StreamerError as exc:
                if exc.retriable:
                    raise
                topic = item.msg.topic() or ""
                consumed[(topic, _MEDIA)] -= 1
                consumed[(topic, "undecodable")] += 1
                letters.append(self._letter(item.msg, exc))
                continue
            paths.update(needed)
            settled.append(item if now is event else _Item(item.msg, now))
        return settled, paths

    def _grouped(self, items: list[_Item]) -> dict[str, list[_Item]]:
        by_sku: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_sku[item.event.sku].append(item)
        return dict(by_sku)

    async def decode(self, batch: Batch) -> _Decoded:
        began = time.perf_counter()
        consumed: Counter[tuple[str, str]] = Counter()
        items, letters = self._decode(batch.messages, consumed)
        by_sku = self._grouped(items)
        # The objects in play as if nothing were stored: a superset of those the fold will
        # need (a stored version can only make events stale), so the ETag look-up runs
        # beside the state read instead of after it. Media events not decoded in full yet
        # name theirs once the state is read (``_settle``).
        paths = set().union(
            *(
                keys_in_play(
                    NOTHING_STORED,
                    [i.event for i in its if not isinstance(i.event, PendingMedia)],
                    self.rules,
                )
                for its in by_sku.values()
            )
        )
        # Re-checked objects changed after the index may have been read: asked afresh.
        fresh = {p for i in items if isinstance(i.event, LeanRecheck) for p in i.event.file_paths}
        decoded = time.perf_counter()
        lookup = asyncio.ensure_future(self._lookup(paths, fresh))
        try:
            states, seen = await self._load(by_sku, items)
            loaded = time.perf_counter()
            objects = await lookup
        finally:
            if not lookup.done():
                lookup.cancel()
            await asyncio.gather(lookup, return_exceptions=True)
        settled, more = self._settle(items, states, letters, consumed)
        if len(settled) != len(items):
            by_sku = self._grouped(settled)
        items = settled
        more.difference_update(objects)
        if more:
            objects.update(await self._lookup(more))
        for (topic, event_type), n in consumed.items():
            if n:
                self.metrics.events_consumed.labels(topic, event_type).inc(n)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "decoded %d messages: decode %.1f ms, state read %.1f ms, ETags of %d objects "
                "%.1f ms",
                len(batch),
                1000 * (decoded - began),
                1000 * (loaded - decoded),
                len(paths) + len(more),
                1000 * (time.perf_counter() - decoded),
            )
        return _Decoded(len(batch), letters, items, by_sku, states, seen, objects)

    async def _load(
        self, by_sku: Mapping[str, list[_Item]], items: list[_Item]
    ) -> tuple[dict[str, SkuState], dict[str, SeenEvent]]:
        if not by_sku:
            return {}, {}
        started = time.perf_counter()
        with tracing.span("gallery state read", {"streamer.skus": len(by_sku)}):
            states, seen = await self.ctx.call(
                "postgres",
                lambda: self.repository.load(list(by_sku), {i.event.event_id for i in items}),
            )
        self.metrics.db_read_latency.observe(time.perf_counter() - started)
        return states, seen

    async def _lookup(
        self, paths: Collection[str], fresh: Collection[str] = ()
    ) -> dict[str, ObjectInfo | None]:
        if not paths:
            return {}
        key_of = {p: s3_key(self.s3_prefix, p) for p in paths}
        fresh_keys = {key_of[p] for p in fresh if p in key_of}
        started = time.perf_counter()
        attributes = {"streamer.objects": len(key_of), "streamer.objects.fresh": len(fresh_keys)}
        with tracing.span("gallery etag lookup", attributes) as traced:
            found = await self.ctx.call(
                "s3", lambda: self.etags.lookup(set(key_of.values()), fresh=fresh_keys)
            )
            traced.set_attribute(
                "streamer.objects.missing", sum(1 for v in found.values() if v is None)
            )
        self.metrics.etag_batch_latency.observe(time.perf_counter() - started)
        return {p: found.get(key) for p, key in key_of.items()}

    # -- 2. fold and diff ------------------------------------------------------------------

    def plan(self, decoded: _Decoded) -> GalleryPlan:
        results: dict[str, list[tuple[_Item, EventResult]]] = {}
        diffs: dict[str, SkuDiff] = {}
        finals: dict[str, SkuState] = {}
        images: Counter[str] = Counter()
        unknown_roles = 0
        # The ids of the batch's events seen before; the fold adds those the batch comes to own.
        seen = dict(decoded.seen)
        folds = fold_batch(
            decoded.states, [i.event for i in decoded.items], decoded.objects, self.rules, seen
        )
        for sku, sku_items in decoded.by_sku.items():
            folded = folds[sku]
            results[sku] = list(zip(sku_items, folded.results, strict=True))
            images.update(folded.image_counts)
            unknown_roles += folded.unknown_roles
            state = decoded.states[sku]
            d = diff(state, folded.state)
            if not d.is_noop:
                diffs[sku] = d
                # As it will be stored: the overlay of the next batch reads this version.
                finals[sku] = folded.state.stored_as(state.row_version + 1)
        return self._derive(
            GalleryPlan(
                decoded.messages,
                decoded.decode_letters,
                results,
                diffs,
                finals,
                images,
                unknown_roles,
            )
        )

    def _derive(self, plan: GalleryPlan) -> GalleryPlan:
        """The plan with its outcome rows, request counts, dead letters and report, from the
        fold results."""
        letters = list(plan.decode_letters)
        outcome_rows: list[OutcomeRow] = []
        request_counts: Counter[tuple[str, str]] = Counter()
        tracked: list[TrackedOutcome] = []
        report = BatchReport(messages=plan.messages, images=Counter(plan.images))
        report.outcomes[EventOutcome.DEAD_LETTERED.value] += len(plan.decode_letters)
        for letter in plan.decode_letters:
            self._track(tracked, letter.headers, EventOutcome.DEAD_LETTERED.value, letter.reason)
        for sku_results in plan.results.values():
            for item, result in sku_results:
                event, outcome = item.event, result.outcome
                report.outcomes[outcome.value] += 1
                if event.request_id:
                    request_counts[(event.request_id, outcome.value)] += 1
                    # Only events with a request id can belong to an intake bulk.
                    self._track(tracked, item.msg.headers(), outcome.value, result.reason)
                recordable = outcome in (EventOutcome.WRITTEN, EventOutcome.PARTIAL) or (
                    # A reused event_id must not overwrite the row of the event that owns the id.
                    outcome is EventOutcome.DEAD_LETTERED and result.reason != "duplicate_event_id"
                )
                if recordable:
                    outcome_rows.append(
                        OutcomeRow(
                            event_id=event.event_id,
                            sku=event.sku,
                            request_id=event.request_id,
                            outcome=outcome.value,
                            reason=result.reason,
                            fingerprint=result.fingerprint or lean_fingerprint(event),
                            topic=item.msg.topic() or "",
                            partition=item.msg.partition() or 0,
                            offset=item.msg.offset() or 0,
                        )
                    )
                if outcome in (EventOutcome.PARTIAL, EventOutcome.DEAD_LETTERED):
                    reason = result.reason or "invalid_event"
                    message = result.message or _describe_invalid(result)
                    letters.append(
                        self._letter(item.msg, InvalidEvent(message, reason=reason), event.sku)
                    )
        return dataclasses.replace(
            plan,
            letters=letters,
            outcome_rows=outcome_rows,
            request_counts=request_counts,
            tracked=tracked,
            report=report,
        )

    @staticmethod
    def _track(
        tracked: list[TrackedOutcome], headers: Any, outcome: str, reason: str | None
    ) -> None:
        found = tracked_item(headers)
        if found is not None:
            tracked.append(TrackedOutcome(found.bulk_uuid, found.item_id, outcome, reason))

    def _without(self, plan: GalleryPlan, bad: Mapping[str, DatabaseDataError]) -> GalleryPlan:
        """The plan with the SKUs whose rows the database refused dead-lettered instead."""
        results = dict(plan.results)
        for sku, error in bad.items():
            results[sku] = [
                (
                    item,
                    EventResult(
                        item.event,
                        EventOutcome.DEAD_LETTERED,
                        reason=error.reason,
                        message=error.message,
                    ),
                )
                # A duplicate, or a reused id, keeps its outcome: the id stays its owner's.
                if r.outcome is not EventOutcome.DUPLICATE and r.reason != "duplicate_event_id"
                else (item, r)
                for item, r in plan.results[sku]
            ]
        diffs = {sku: d for sku, d in plan.diffs.items() if sku not in bad}
        finals = {sku: f for sku, f in plan.finals.items() if sku not in bad}
        return self._derive(dataclasses.replace(plan, results=results, diffs=diffs, finals=finals))

    # -- 3. persist, inside the checkpoint's transaction -----------------------------------

    async def effects(self, plan: GalleryPlan) -> None:
        return None  # the gallery's only effects are its writes and its outcome events

    async def persist(self, tx: Transaction, plan: GalleryPlan, effects: None) -> Output:
        rows: list[RowCounts] = []

        async def write_skus(skus: Collection[str]) -> None:
            rows.append(await apply_diffs(tx.conn, [plan.diffs[s] for s in skus]))

        bad = await tx.isolate(list(plan.diffs), write_skus)
        done = self._without(plan, bad) if bad else plan
        await record_outcomes(tx.conn, done.outcome_rows, done.request_counts)
        if done.tracked:
            await record_tracked(tx.conn, done.tracked)
        written: RowCounts = sum(map(Counter, rows), Counter())
        output = Output(
            letters=done.letters,
            counts=Counter(done.report.outcomes),
            writes=self.writes(done),
            detail=_Persisted(done, written),
        )
        for sku, d in done.diffs.items():
            if not d.gallery_changed:
                continue  # a product row alone (name, enabled, a first version) is no gallery change
            applied = [
                item.event
                for item, r in done.results.get(sku, [])
                if r.outcome in (EventOutcome.WRITTEN, EventOutcome.PARTIAL)
            ]
            record = gallery_updated(d, done.finals[sku], applied)
            output.messages.append(
                OutputMessage(
                    topic=self.outcome_topic,
                    value=self.codec.encode_outcome(record, topic=self.outcome_topic),
                    key=sku.encode(),
                    token=("outcome", record["event_id"]),
                    headers=self._outcome_trace(done, sku, record["event_id"]),
                )
            )
        if self.settings.etag_source == "index":
            output.messages.extend(await self._behind_the_bucket(tx, done))
        return output

    @staticmethod
    def writes(done: GalleryPlan) -> dict[str, dict[Any, Any]]:
        """What a plan carried out leaves stored, in the shape of ``_Decoded.reads``."""
        seen = {r.event_id: SeenEvent(r.fingerprint, r.outcome) for r in done.outcome_rows}
        return {"states": dict(done.finals), "seen": seen}

    def _outcome_trace(
        self, plan: GalleryPlan, sku: str, event_id: str
    ) -> list[tuple[str, bytes]] | None:
        """The outcome's trace headers: it goes on in the trace of the last event applied
        (the others linked); None while tracing is off (nothing looked at)."""
        if not tracing.enabled():
            return None
        sources = [
            item.msg
            for item, r in reversed(plan.results.get(sku, []))
            if r.outcome in (EventOutcome.WRITTEN, EventOutcome.PARTIAL)
        ]
        return tracing.sent_on(self.outcome_topic, sources, {"streamer.event_id": event_id})

    async def _behind_the_bucket(self, tx: Transaction, plan: GalleryPlan) -> list[OutputMessage]:
        """Re-checks of images this batch stores with bytes the index says are gone.

        An object overwritten while this batch looked it up and wrote it: the objects job
        may have looked for the galleries using it before this batch committed. The index
        rows are read under a share lock (``read_objects_locked``), so either that job saw
        this batch's rows, or this batch sees its newer row here and asks itself to look
        again (from S3, in the SKU's partition order, like any re-check).
        """
        written: dict[str, dict[str, str]] = {}  # key -> sku -> etag written
        paths: dict[str, str] = {}
        for sku, d in plan.diffs.items():
            for img in (*d.inserts, *d.content_changes):
                key = s3_key(self.s3_prefix, img.file_path)
                written.setdefault(key, {})[sku] = img.etag
                paths[key] = img.file_path
        if not written:
            return []
        rows = await read_objects_locked(tx.conn, self.s3.s3_bucket, written)
        behind: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for key, row in rows.items():
            for sku, etag in written[key].items():
                if row.deleted or row.etag != etag:
                    behind[sku].append((paths[key], row.etag or "deleted"))
        out: list[OutputMessage] = []
        for sku, hits in sorted(behind.items()):
            marks = ",".join(f"{p}@{e}" for p, e in sorted(hits))
            event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamer:behind:{sku}:{marks}"))
            record = {
                "event_id": event_id,
                "sku": sku,
                "occurred_at": datetime.now(UTC),
                "source": "streamer-gallery",
                "file_paths": sorted({p for p, _ in hits}),
            }
            out.append(
                OutputMessage(
                    topic=self.media_topic,
                    value=self.codec.encode_record(
                        record, type_name=RECHECK, topic=self.media_topic
                    ),
                    key=sku.encode(),
                    token=("recheck", event_id),
                    headers=tracing.sent_on(
                        self.media_topic, [item.msg for item, _ in plan.results.get(sku, [])]
                    ),
                )
            )
        if out:
            log.info("%d galleries stored behind the bucket: re-checks published", len(out))
        return out

    def committed(self, plan: GalleryPlan, effects: None, output: Output) -> None:
        persisted: _Persisted = output.detail
        done, report = persisted.plan, persisted.plan.report
        for outcome, n in report.outcomes.items():
            self.metrics.events_processed.labels(outcome).inc(n)
        for result, n in report.images.items():
            self.metrics.images.labels(result).inc(n)
        for op, n in persisted.rows.items():
            if n:
                self.metrics.db_rows_written.labels(op).inc(n)
        outcome_events = sum(1 for m in output.messages if m.topic == self.outcome_topic)
        self.metrics.outcome_events.inc(outcome_events)
        if done.unknown_roles:
            self.metrics.unknown_roles.inc(done.unknown_roles)
        for sku_results in done.results.values():
            for _item, applied in sku_results:
                if isinstance(applied.event, LeanRecheck):
                    self.metrics.rechecks.labels(_recheck_result(applied)).inc()


def _recheck_result(result: EventResult) -> str:
    if result.outcome is EventOutcome.WRITTEN:
        return "changed"
    if result.outcome in (EventOutcome.PARTIAL, EventOutcome.DEAD_LETTERED):
        return result.reason if result.reason in ("object_missing",) else "invalid"
    return result.outcome.value  # noop, duplicate


def _describe_invalid(result: EventResult) -> str:
    parts = [
        f"{img.file_path}: {img.invalid_message or img.invalid_reason}"
        for img in result.invalid_images
    ]
    return "; ".join(parts) or (result.reason or "event could not be applied")
