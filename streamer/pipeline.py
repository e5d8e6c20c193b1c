"""One batch, top to bottom: decode, validate, fold per SKU, check ETags, diff, write, publish.

The commit order of a batch, written once:

1. Decode and validate every message; what cannot be read becomes a dead letter.
2. Load the stored state of the batch's SKUs and the event ids seen before (two SELECTs).
3. Look up the ETags of every distinct object still in play (one batched look-up).
4. Fold each SKU's events in consume order onto its stored state; diff the result.
5. Open one transaction: advance the offsets, fenced by this worker's epoch (row locks
   first, so a new owner waits for us); write the gallery rows; record outcomes. A data
   error isolated to one SKU is found with a savepoint per SKU, and that SKU is dead-lettered.
6. Still inside the transaction, publish dead letters and outcome events and wait until
   the broker acknowledged every one of them.
7. Commit. Only now have the offsets passed the batch's messages.

A crash before 7 leaves the database as it was and the batch is consumed again; a
message published in 6 may then be published twice (at least once, never lost, and
outcome events carry the source event ids for de-duplication).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message

from streamer.circuit import CircuitBreaker
from streamer.codec import Codec
from streamer.config import Settings
from streamer.db import BatchWriter, Database, OutcomeRow
from streamer.deadletter import DeadLetter
from streamer.diff import SkuDiff, diff
from streamer.errors import (
    BrokerUnavailable,
    DatabaseDataError,
    DeliveryError,
    InvalidEvent,
    StreamerError,
)
from streamer.etags import EtagSource, s3_key
from streamer.events import EventType, MediaGalleryChanged, ProductChanged, fingerprint
from streamer.fold import EventOutcome, EventResult, FoldRules, fold, keys_in_play
from streamer.gallery import ObjectInfo, SkuState, display_order
from streamer.metrics import Metrics
from streamer.publisher import Publisher
from streamer.retry import RetryPolicy, retry_async

__all__ = ["BatchReport", "Pipeline"]

log = logging.getLogger(__name__)

Event = ProductChanged | MediaGalleryChanged
# Outcomes after which the same event may come back from a dead-letter replay and be applied.
_REPLAYABLE = {EventOutcome.PARTIAL.value, EventOutcome.DEAD_LETTERED.value}
TopicPartition = tuple[str, int]


@dataclass
class BatchReport:
    """What one batch did; the worker adds these up and logs them on exit."""

    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    outcome_events: int = 0
    rows_written: int = 0
    # The offset after each partition's last message: what the batch committed.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

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
class _Plan:
    """Everything steps 5-7 write, derived from the fold; rebuilt without SKUs that fail."""

    messages: int
    decode_letters: list[DeadLetter]
    results: dict[str, list[tuple[_Item, EventResult]]]
    diffs: dict[str, SkuDiff]
    finals: dict[str, SkuState]
    images: Counter[str]
    letters: list[DeadLetter] = field(default_factory=list)
    outcome_rows: list[OutcomeRow] = field(default_factory=list)
    request_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    report: BatchReport = field(default_factory=BatchReport)


class Pipeline:
    """Turns one batch of consumed messages into committed gallery state."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        etags: EtagSource,
        publisher: Publisher,
        codec: Codec,
        metrics: Metrics,
        breakers: Mapping[str, CircuitBreaker],
    ) -> None:
        self.settings = settings
        self.db = db
        self.etags = etags
        self.publisher = publisher
        self.codec = codec
        self.metrics = metrics
        self.breakers = breakers
        self.policy = RetryPolicy.from_settings(settings)
        self.rules = FoldRules(
            max_image_bytes=settings.max_image_bytes,
            image_limit=settings.image_limit,
            verify_producer_etag=settings.verify_producer_etag,
        )
        self._topic_types = {
            settings.product_topic: EventType.PRODUCT,
            settings.media_topic: EventType.MEDIA,
        }
        # Messages already acknowledged by the broker for a batch that is being retried:
        # a retry must not publish them a second time.
        self._acked: set[tuple[str, Any]] = set()

    async def _retry(self, dependency: str, fn: Any) -> Any:
        return await retry_async(
            fn,
            dependency=dependency,
            policy=self.policy,
            breaker=self.breakers.get(dependency),
            metrics=self.metrics,
        )

    # -- 1. decode ----------------------------------------------------------

    def _letter(self, msg: Message, error: StreamerError, sku: str | None = None) -> DeadLetter:
        return DeadLetter.from_error(msg, error, group_id=self.settings.group_id, sku=sku)

    def _decode(self, messages: Sequence[Message]) -> tuple[list[_Item], list[DeadLetter]]:
        items: list[_Item] = []
        letters: list[DeadLetter] = []
        consumed: Counter[tuple[str, str]] = Counter()
        for msg in messages:
            topic = msg.topic() or ""
            try:
                event = self.codec.decode_event(msg.value())
            except StreamerError as exc:
                if exc.retriable:
                    raise
                consumed[(topic, "undecodable")] += 1
                letters.append(self._letter(msg, exc))
                continue
            consumed[(topic, event.type.value)] += 1
            expected = self._topic_types.get(topic)
            key = msg.key()
            try:
                key_text = key.decode("utf-8") if key is not None else None
            except UnicodeDecodeError:
                key_text = None
            if expected is not None and event.type is not expected:
                err: StreamerError = InvalidEvent(
                    f"{event.type.value} on topic {topic}, which carries {expected.value}",
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

    # -- 2-4. state, ETags, fold, diff ----------------------------------------

    async def _plan(self, messages: Sequence[Message]) -> _Plan:
        items, letters = self._decode(messages)
        by_sku: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_sku[item.event.sku].append(item)

        states: dict[str, SkuState] = {}
        seen: dict[str, Any] = {}
        if by_sku:
            started = time.perf_counter()
            # Two independent reads on two pooled connections, in parallel. If the second
            # fails the first is cancelled, so the error surfaces as itself, not as a group.
            loading = asyncio.ensure_future(
                self._retry("postgres", lambda: self.db.load_states(list(by_sku)))
            )
            try:
                seen = await self._retry(
                    "postgres", lambda: self.db.seen_events({i.event.event_id for i in items})
                )
                states = await loading
            finally:
                if not loading.done():
                    loading.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await loading
            self.metrics.db_read_latency.observe(time.perf_counter() - started)

        results: dict[str, list[tuple[_Item, EventResult]]] = {}
        pending: dict[str, list[_Item]] = {}
        for sku, sku_items in by_sku.items():
            kept: list[_Item] = []
            done: list[tuple[_Item, EventResult]] = []
            for item in sku_items:
                prior = seen.get(item.event.event_id)
                if prior is None or prior.outcome in _REPLAYABLE:
                    kept.append(item)
                elif prior.fingerprint == fingerprint(item.event):
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
            results[sku] = done
            pending[sku] = kept

        wanted: dict[str, set[str]] = {
            sku: keys_in_play(states[sku], [i.event for i in its], self.rules)
            for sku, its in pending.items()
            if its
        }
        prefix = self.settings.s3_prefix
        key_of = {p: s3_key(prefix, p) for paths in wanted.values() for p in paths}
        found: dict[str, ObjectInfo | None] = {}
        if key_of:
            started = time.perf_counter()
            found = await self._retry("s3", lambda: self.etags.lookup(set(key_of.values())))
            self.metrics.etag_batch_latency.observe(time.perf_counter() - started)

        diffs: dict[str, SkuDiff] = {}
        finals: dict[str, SkuState] = {}
        images: Counter[str] = Counter()
        for sku, its in pending.items():
            if not its:
                continue
            objects = {p: found.get(key_of[p]) for p in wanted.get(sku, ())}
            folded = fold(states[sku], [i.event for i in its], objects, self.rules)
            results[sku].extend(zip(its, folded.results, strict=True))
            images.update(folded.image_counts)
            if folded.unknown_roles:
                self.metrics.unknown_roles.inc(folded.unknown_roles)
            d = diff(states[sku], folded.state)
            if not d.is_noop:
                diffs[sku] = d
                finals[sku] = folded.state

        plan = _Plan(len(messages), letters, results, diffs, finals, images)
        self._derive(plan)
        return plan

    def _derive(self, plan: _Plan) -> None:
        """Outcome rows, request counts, dead letters and the report, from the fold results."""
        plan.letters = list(plan.decode_letters)
        plan.outcome_rows = []
        plan.request_counts = Counter()
        plan.report = BatchReport(messages=plan.messages, images=Counter(plan.images))
        plan.report.outcomes[EventOutcome.DEAD_LETTERED.value] += len(plan.decode_letters)
        for sku_results in plan.results.values():
            for item, result in sku_results:
                event, outcome = item.event, result.outcome
                plan.report.outcomes[outcome.value] += 1
                if event.request_id:
                    plan.request_counts[(event.request_id, outcome.value)] += 1
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
                            fingerprint=fingerprint(event),
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

    def _reject(self, plan: _Plan, bad: Mapping[str, DatabaseDataError]) -> _Plan:
        """The same plan with the SKUs whose rows the database refused dead-lettered instead."""
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
                if r.outcome is not EventOutcome.DUPLICATE
                else (item, r)
                for item, r in plan.results[sku]
            ]
        rebuilt = _Plan(
            plan.messages,
            plan.decode_letters,
            results,
            {s: d for s, d in plan.diffs.items() if s not in bad},
            {s: f for s, f in plan.finals.items() if s not in bad},
            plan.images,
        )
        self._derive(rebuilt)
        return rebuilt

    # -- 5-7. write, publish, commit -------------------------------------------

    def _outcome_record(
        self, d: SkuDiff, final: SkuState, items: Sequence[tuple[_Item, EventResult]]
    ) -> dict[str, Any]:
        changed = {img.file_path for img in d.content_changes} | {
            img.file_path for img in d.inserts
        }
        applied = [
            item.event
            for item, r in items
            if r.outcome in (EventOutcome.WRITTEN, EventOutcome.PARTIAL)
        ]
        images_src = final.images.values()
        version = max(final.product_version, final.gallery_version, 0)
        ids = sorted(e.event_id for e in applied)
        return {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamer:{d.sku}:{','.join(ids)}")),
            "sku": d.sku,
            "version": version,
            "occurred_at": datetime.now(UTC),
            "deleted": final.deleted,
            "source_event_ids": ids,
            "request_ids": sorted({e.request_id for e in applied if e.request_id}),
            "images": [
                {
                    "file_path": img.file_path,
                    "etag": img.etag,
                    "size": img.size,
                    "content_type": img.content_type,
                    "label": img.label,
                    "position": img.position,
                    "disabled": img.disabled,
                    "roles": list(img.roles),
                    "content_changed": img.file_path in changed,
                }
                for img in sorted(images_src, key=display_order)
            ],
            "removed": list(d.removes),
            "content_changed": sorted(changed),
        }

    def _publish(self, plan: _Plan) -> int:
        """Produce dead letters and outcome events not yet acknowledged; wait for every ack."""
        sent: list[tuple[str, Any]] = []
        for original in plan.letters:
            token = ("dlq", (original.topic, original.partition, original.offset))
            if token in self._acked:
                continue
            letter = original.fitted(self.settings.dlq_max_value_bytes)
            self.publisher.produce(
                self.settings.dlq_topic,
                letter.value,
                key=letter.key,
                headers=letter.kafka_headers(),
                timestamp_ms=letter.timestamp_ms,
            )
            sent.append(token)
        outcomes = 0
        for sku, d in plan.diffs.items():
            if not d.gallery_changed:
                continue  # a product row alone (name, enabled, a first version) is no gallery change
            record = self._outcome_record(d, plan.finals[sku], plan.results.get(sku, []))
            token = ("outcome", record["event_id"])
            if token in self._acked:
                continue
            value = self.codec.encode_outcome(record, topic=self.settings.outcome_topic)
            self.publisher.produce(self.settings.outcome_topic, value, key=sku.encode())
            sent.append(token)
            outcomes += 1
        if sent:
            self.publisher.flush(timeout_s=self.settings.delivery_timeout_ms / 1000)
            self._acked.update(sent)
        return outcomes

    async def _write(
        self, plan: _Plan, offsets: Mapping[TopicPartition, tuple[int, int]]
    ) -> tuple[_Plan, int]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        async with self.db.transaction() as writer:
            await writer.advance_offsets(self.settings.group_id, offsets)
            bad = await self._apply(writer, plan)
            if bad:
                plan = self._reject(plan, bad)
            await writer.record_outcomes(plan.outcome_rows, plan.request_counts)
            try:
                outcomes = await loop.run_in_executor(None, self._publish, plan)
            except DeliveryError as exc:
                # Not the data's fault: wait it out with partitions paused, never crash-loop.
                raise BrokerUnavailable(f"publishing dead letters/outcomes failed: {exc}") from exc
            rows = sum(writer.rows_written.values())
            for op, n in writer.rows_written.items():
                if n:
                    self.metrics.db_rows_written.labels(op).inc(n)
        self.metrics.db_write_latency.observe(time.perf_counter() - started)
        plan.report.rows_written = rows
        return plan, outcomes

    async def _apply(self, writer: BatchWriter, plan: _Plan) -> dict[str, DatabaseDataError]:
        if not plan.diffs:
            return {}
        try:
            async with writer.savepoint():
                await writer.apply(plan.diffs.values())
            return {}
        except DatabaseDataError:
            log.warning("batch write refused by the database; isolating the SKU at fault")
        bad: dict[str, DatabaseDataError] = {}
        for sku, d in plan.diffs.items():
            try:
                async with writer.savepoint():
                    await writer.apply([d])
            except DatabaseDataError as exc:
                bad[sku] = exc
        return bad

    async def process(
        self, messages: Sequence[Message], epochs: Mapping[TopicPartition, int]
    ) -> BatchReport:
        """Process and commit one batch; raises retriable errors for the worker to wait out."""
        started = time.perf_counter()
        next_offsets: dict[TopicPartition, int] = {}
        for msg in messages:
            tp = (msg.topic() or "", msg.partition() or 0)
            next_offsets[tp] = max(next_offsets.get(tp, 0), (msg.offset() or 0) + 1)
        offsets = {tp: (o, epochs[tp]) for tp, o in next_offsets.items()}
        plan = await self._plan(messages)
        plan, outcomes = await self._retry("postgres", lambda: self._write(plan, offsets))
        self._acked.clear()

        report = plan.report
        report.outcome_events = outcomes
        report.next_offsets = next_offsets
        for letter in plan.letters:
            report.dead_letters[letter.reason] += 1
            self.metrics.dead_letters.labels(letter.reason).inc()
        for outcome, n in report.outcomes.items():
            self.metrics.events_processed.labels(outcome).inc(n)
        for result, n in report.images.items():
            self.metrics.images.labels(result).inc(n)
        self.metrics.outcome_events.inc(outcomes)
        self.metrics.batch_size.observe(len(messages))
        self.metrics.batch_duration.observe(time.perf_counter() - started)
        self.metrics.last_commit.set(time.time())
        return report


def _describe_invalid(result: EventResult) -> str:
    parts = [
        f"{img.file_path}: {img.invalid_message or img.invalid_reason}"
        for img in result.invalid_images
    ]
    return "; ".join(parts) or (result.reason or "event could not be applied")
