"""The gallery job: product and media events in, ETag-checked gallery state and outcomes out.

The data path of a batch, top to bottom (the runtime's checkpoint commits it):

1. ``prepare``: decode and validate every message (what cannot be read becomes a
   dead letter); load the stored state of the batch's SKUs and the event ids seen
   before and, at the same time, look up the ETags of every distinct object the
   events name (as if nothing were stored: a superset of what the fold needs).
2. ``plan``: fold each SKU's events in consume order onto its stored state and
   diff the result; derive the outcome rows, request counts and dead letters.

The runtime prepares batch N+1 while batch N commits, so N+1's state read may
predate N's commit. ``committed(N)`` keeps what N wrote (final states of the SKUs
it changed, the outcomes it recorded) and ``plan(N+1)`` lays them over N+1's reads
when those began before N committed: the fold always starts from what is stored.
The ETag look-up does not depend on the stored state at all, so it is never short.
3. ``write`` (inside the checkpoint's transaction): the gallery rows of every
   changed SKU (a SKU whose rows the database refuses is dead-lettered alone),
   the event outcomes; returns the dead letters and ``GalleryUpdated`` events.
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
from streamer.contract.events import EventType
from streamer.contract.lean import RECHECK, GalleryInput, LeanRecheck, lean_fingerprint
from streamer.contract.topics import TopicSettings
from streamer.errors import DatabaseDataError, InvalidEvent, StreamerError
from streamer.gallery.diff import SkuDiff, diff
from streamer.gallery.etags import EtagSource, make_etag_source
from streamer.gallery.fold import EventOutcome, EventResult, FoldRules, fold, keys_in_play
from streamer.gallery.metrics import GalleryMetrics
from streamer.gallery.outcomes import gallery_updated
from streamer.gallery.repository import (
    GalleryRepository,
    OutcomeRow,
    RowCounts,
    SeenEvent,
    apply_diffs,
    record_outcomes,
)
from streamer.gallery.settings import GallerySettings
from streamer.gallery.state import ObjectInfo, SkuState
from streamer.objectindex.store import read_objects_locked
from streamer.runtime import tracing
from streamer.runtime.checkpoint import Transaction
from streamer.runtime.deadletters import DeadLetter
from streamer.runtime.handler import Batch, HandlerContext, Output, OutputMessage
from streamer.storage.keys import s3_key
from streamer.storage.settings import S3Settings
from streamer.tracking.model import TrackedOutcome, tracked_item
from streamer.tracking.store import record_outcomes as record_tracked

__all__ = ["BatchReport", "GalleryHandler", "GalleryPlan"]

log = logging.getLogger(__name__)

Event = GalleryInput
# What keys_in_play starts from to name every object an event could need.
_NOTHING_STORED = SkuState("")
# Outcomes after which the same event may come back from a dead-letter replay and be applied.
_REPLAYABLE = {EventOutcome.PARTIAL.value, EventOutcome.DEAD_LETTERED.value}


@dataclass
class BatchReport:
    """What batches did; the handler adds them up for logs and tests."""

    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    outcome_events: int = 0
    rows_written: int = 0

    def add(self, other: BatchReport) -> None:
        self.messages += other.messages
        self.outcomes.update(other.outcomes)
        self.images.update(other.images)
        self.dead_letters.update(other.dead_letters)
        self.outcome_events += other.outcome_events
        self.rows_written += other.rows_written


@dataclass
class _Item:
    msg: Message
    event: Event


@dataclass
class _Prepared:
    messages: int
    decode_letters: list[DeadLetter]
    by_sku: dict[str, list[_Item]]
    states: dict[str, SkuState]
    seen: dict[str, SeenEvent]
    objects: dict[str, ObjectInfo | None]  # by file path
    commits_before: int  # batches committed when the reads began


@dataclass
class _Committed:
    """What the last committed batch wrote, for the batch prepared while it committed."""

    finals: dict[str, SkuState] = field(default_factory=dict)
    seen: dict[str, SeenEvent] = field(default_factory=dict)


@dataclass
class GalleryPlan:
    """Everything ``write`` needs, derived from the fold; rebuilt without SKUs that fail."""

    messages: int
    decode_letters: list[DeadLetter]
    results: dict[str, list[tuple[_Item, EventResult]]]
    diffs: dict[str, SkuDiff]
    finals: dict[str, SkuState]
    images: Counter[str]
    letters: list[DeadLetter] = field(default_factory=list)
    outcome_rows: list[OutcomeRow] = field(default_factory=list)
    request_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    tracked: list[TrackedOutcome] = field(default_factory=list)  # items of intake bulks
    report: BatchReport = field(default_factory=BatchReport)
    rows: RowCounts = field(default_factory=dict)


class GalleryHandler:
    """The gallery sync, as a handler on the runtime (``streamer consume``)."""

    name = "gallery"
    dependencies = ("s3",)

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
        self.group_id = settings.group_id
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
        self.report = BatchReport()
        self._commits = 0
        self._last = _Committed()

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.metrics = GalleryMetrics(ctx.registry)
        self.repository = GalleryRepository(ctx.database)
        self.etags = self._etags or make_etag_source(
            self.s3, self.settings.etag_source, self.metrics, database=ctx.database
        )

    async def stop(self) -> None:
        await self.etags.close()

    # -- 1. decode, state, ETags -------------------------------------------------------

    def _letter(self, msg: Message, error: StreamerError, sku: str | None = None) -> DeadLetter:
        return self.ctx.dead_letter(msg, error, sku=sku)

    def _decode(self, messages: Sequence[Message]) -> tuple[list[_Item], list[DeadLetter]]:
        items: list[_Item] = []
        letters: list[DeadLetter] = []
        consumed: Counter[tuple[str, str]] = Counter()
        for msg in messages:
            topic = msg.topic() or ""
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
        for (topic, event_type), n in consumed.items():
            self.metrics.events_consumed.labels(topic, event_type).inc(n)
        return items, letters

    async def prepare(self, batch: Batch) -> _Prepared:
        commits_before = self._commits
        items, letters = self._decode(batch.messages)
        by_sku: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_sku[item.event.sku].append(item)
        # The objects in play as if nothing were stored: a superset of those the fold will
        # need (a stored version can only make events stale), so the ETag look-up runs
        # beside the state read instead of after it.
        paths = set().union(
            *(
                keys_in_play(_NOTHING_STORED, [i.event for i in its], self.rules)
                for its in by_sku.values()
            )
        )
        # Re-checked objects changed after the index may have been read: asked afresh.
        fresh = {p for i in items if isinstance(i.event, LeanRecheck) for p in i.event.file_paths}
        lookup = asyncio.ensure_future(self._lookup(paths, fresh))
        try:
            states, seen = await self._load(by_sku, items)
            objects = await lookup
        finally:
            if not lookup.done():
                lookup.cancel()
            await asyncio.gather(lookup, return_exceptions=True)
        return _Prepared(len(batch), letters, dict(by_sku), states, seen, objects, commits_before)

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

    def _catch_up(self, prepared: _Prepared) -> None:
        """Lay the last committed batch's writes over reads that began before it committed."""
        behind = self._commits - prepared.commits_before
        if behind == 0:
            return
        if behind > 1:
            raise RuntimeError(
                f"a batch prepared {behind} commits ago cannot be planned: the runtime prepares "
                "at most one batch ahead"
            )
        for sku, final in self._last.finals.items():
            if sku in prepared.states:
                prepared.states[sku] = final
        for event_id, seen in self._last.seen.items():
            prepared.seen[event_id] = seen
        prepared.commits_before = self._commits

    async def plan(self, prepared: _Prepared) -> GalleryPlan:
        self._catch_up(prepared)
        results: dict[str, list[tuple[_Item, EventResult]]] = {}
        diffs: dict[str, SkuDiff] = {}
        finals: dict[str, SkuState] = {}
        images: Counter[str] = Counter()
        for sku, sku_items in prepared.by_sku.items():
            kept, done = self._seen_before(sku_items, prepared.seen)
            results[sku] = done
            if not kept:
                continue
            state = prepared.states[sku]
            folded = fold(state, [i.event for i in kept], prepared.objects, self.rules)
            results[sku].extend(zip(kept, folded.results, strict=True))
            images.update(folded.image_counts)
            if folded.unknown_roles:
                self.metrics.unknown_roles.inc(folded.unknown_roles)
            d = diff(state, folded.state)
            if not d.is_noop:
                diffs[sku] = d
                # As it will be stored: the overlay of the next batch reads this version.
                finals[sku] = dataclasses.replace(folded.state, row_version=state.row_version + 1)
        plan = GalleryPlan(
            prepared.messages, prepared.decode_letters, results, diffs, finals, images
        )
        self._derive(plan)
        return plan

    @staticmethod
    def _seen_before(
        items: list[_Item], seen: Mapping[str, SeenEvent]
    ) -> tuple[list[_Item], list[tuple[_Item, EventResult]]]:
        """Events to fold, and those already applied in an earlier batch (duplicates, reused ids)."""
        kept: list[_Item] = []
        done: list[tuple[_Item, EventResult]] = []
        for item in items:
            prior = seen.get(item.event.event_id)
            if prior is None or prior.outcome in _REPLAYABLE:
                kept.append(item)
            elif prior.fingerprint == lean_fingerprint(item.event):
                done.append((item, EventResult(item.event, EventOutcome.DUPLICATE)))
            else:
                done.append(
                    (
                        item,
                        EventResult(
                            item.event,
                            EventOutcome.DEAD_LETTERED,
                            reason="duplicate_event_id",
                            message=f"event_id {item.event.event_id} was seen before "
                            "with a different payload",
                        ),
                    )
                )
        return kept, done

    def _derive(self, plan: GalleryPlan) -> None:
        """Outcome rows, request counts, dead letters and the report, from the fold results."""
        plan.letters = list(plan.decode_letters)
        plan.outcome_rows = []
        plan.request_counts = Counter()
        plan.tracked = []
        plan.report = BatchReport(messages=plan.messages, images=Counter(plan.images))
        plan.report.outcomes[EventOutcome.DEAD_LETTERED.value] += len(plan.decode_letters)
        for letter in plan.decode_letters:
            self._track(plan, letter.headers, EventOutcome.DEAD_LETTERED.value, letter.reason)
        for sku_results in plan.results.values():
            for item, result in sku_results:
                event, outcome = item.event, result.outcome
                plan.report.outcomes[outcome.value] += 1
                if event.request_id:
                    plan.request_counts[(event.request_id, outcome.value)] += 1
                    # Only events with a request id can belong to an intake bulk.
                    self._track(plan, item.msg.headers(), outcome.value, result.reason)
                recordable = outcome in (EventOutcome.WRITTEN, EventOutcome.PARTIAL) or (
                    # A reused event_id must not overwrite the row of the event that owns the id.
                    outcome is EventOutcome.DEAD_LETTERED and result.reason != "duplicate_event_id"
                )
                if recordable:
                    plan.outcome_rows.append(
                        OutcomeRow(
                            event_id=event.event_id,
                            sku=event.sku,
                            request_id=event.request_id,
                            outcome=outcome.value,
                            reason=result.reason,
                            fingerprint=lean_fingerprint(event),
                            topic=item.msg.topic() or "",
                            partition=item.msg.partition() or 0,
                            offset=item.msg.offset() or 0,
                        )
                    )
                if outcome in (EventOutcome.PARTIAL, EventOutcome.DEAD_LETTERED):
                    reason = result.reason or "invalid_event"
                    message = result.message or _describe_invalid(result)
                    plan.letters.append(
                        self._letter(item.msg, InvalidEvent(message, reason=reason), event.sku)
                    )

    @staticmethod
    def _track(plan: GalleryPlan, headers: Any, outcome: str, reason: str | None) -> None:
        found = tracked_item(headers)
        if found is not None:
            plan.tracked.append(TrackedOutcome(found.bulk_uuid, found.item_id, outcome, reason))

    def _reject(self, plan: GalleryPlan, bad: Mapping[str, DatabaseDataError]) -> None:
        """The SKUs whose rows the database refused are dead-lettered instead (in place)."""
        for sku, error in bad.items():
            plan.results[sku] = [
                (
                    item,
                    EventResult(
                        item.event,
                        EventOutcome.DEAD_LETTERED,
                        reason=error.reason,
                        message=error.message,
                    ),
                )
                if r.outcome is not EventOutcome.DUPLICATE
                else (item, r)
                for item, r in plan.results[sku]
            ]
            plan.diffs.pop(sku, None)
            plan.finals.pop(sku, None)
        self._derive(plan)

    # -- 3. write, inside the checkpoint's transaction -------------------------------------

    async def write(self, tx: Transaction, plan: GalleryPlan) -> Output:
        rows: list[RowCounts] = []

        async def write_skus(skus: Collection[str]) -> None:
            rows.append(await apply_diffs(tx.conn, [plan.diffs[s] for s in skus]))

        bad = await tx.isolate(list(plan.diffs), write_skus)
        if bad:
            self._reject(plan, bad)
        await record_outcomes(tx.conn, plan.outcome_rows, plan.request_counts)
        if plan.tracked:
            await record_tracked(tx.conn, plan.tracked)
        plan.rows = sum(map(Counter, rows), Counter())
        plan.report.rows_written = sum(plan.rows.values())
        output = Output(letters=plan.letters, counts=Counter(plan.report.outcomes))
        for sku, d in plan.diffs.items():
            if not d.gallery_changed:
                continue  # a product row alone (name, enabled, a first version) is no gallery change
            applied = [
                item.event
                for item, r in plan.results.get(sku, [])
                if r.outcome in (EventOutcome.WRITTEN, EventOutcome.PARTIAL)
            ]
            record = gallery_updated(d, plan.finals[sku], applied)
            output.messages.append(
                OutputMessage(
                    topic=self.outcome_topic,
                    value=self.codec.encode_outcome(record, topic=self.outcome_topic),
                    key=sku.encode(),
                    token=("outcome", record["event_id"]),
                    headers=self._outcome_trace(plan, sku, record["event_id"]),
                )
            )
        plan.report.outcome_events = len(output.messages)
        if self.settings.etag_source == "index":
            output.messages.extend(await self._behind_the_bucket(tx, plan))
        return output

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

    def committed(self, plan: GalleryPlan, output: Output) -> None:
        report = plan.report
        for letter in plan.letters:
            report.dead_letters[letter.reason] += 1
        for outcome, n in report.outcomes.items():
            self.metrics.events_processed.labels(outcome).inc(n)
        for result, n in report.images.items():
            self.metrics.images.labels(result).inc(n)
        for op, n in plan.rows.items():
            if n:
                self.metrics.db_rows_written.labels(op).inc(n)
        self.metrics.outcome_events.inc(report.outcome_events)
        for sku_results in plan.results.values():
            for _item, done in sku_results:
                if isinstance(done.event, LeanRecheck):
                    self.metrics.rechecks.labels(_recheck_result(done)).inc()
        self.report.add(report)
        self._last = _Committed(
            finals=dict(plan.finals),
            seen={r.event_id: SeenEvent(r.fingerprint, r.outcome) for r in plan.outcome_rows},
        )
        self._commits += 1


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
