"""The objects job: bucket notifications in, the object index and gallery re-checks out.

1. ``decode``: parse every message into object changes (``objectindex.records``); what is
   not a notification is dead-lettered with its reason; records of other buckets, S3's
   test event and events that change no bytes (tags, ACLs, restores) are counted. That
   is the plan; the job has no effects outside PostgreSQL and Kafka.
2. ``persist`` (inside the checkpoint's transaction): upsert each key's newest change where it
   is newer than the index row (out-of-order and duplicate deliveries change nothing);
   for the changes taken, find the galleries whose stored image differs (by the
   ``gallery_images`` path index) and return one ``GalleryRecheck`` per SKU, keyed by SKU,
   on the media topic: the checkpoint publishes them before it commits the index rows.
   The gallery job applies them in its partition's order: it stays the only writer.

Messages come from the Kafka topic or from an SQS queue (the runtime's ``SqsSource``): the
same handler and checkpoint either way. ``objects reconcile`` writes through the same
``persist`` and checkpoint too (``reconcile.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from streamer.contract.codec import Codec
from streamer.contract.lean import RECHECK
from streamer.contract.topics import TopicSettings
from streamer.errors import StreamerError
from streamer.objectindex.records import ObjectChange, parse_notification
from streamer.objectindex.store import Upserted, galleries_using, upsert_changes
from streamer.objects.metrics import ObjectsMetrics
from streamer.objects.rechecks import file_path_of, plan_rechecks, recheck_record
from streamer.objects.settings import ObjectsSettings
from streamer.runtime import tracing
from streamer.runtime.checkpoint import Transaction
from streamer.runtime.deadletters import DeadLetter
from streamer.runtime.handler import Batch, HandlerContext, Output, OutputMessage, SimpleHandler
from streamer.storage.settings import S3Settings

__all__ = ["ObjectsHandler", "ObjectsPlan"]


@dataclass(frozen=True)
class ObjectsPlan:
    changes: list[ObjectChange] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class ObjectsHandler(SimpleHandler[ObjectsPlan]):
    """``streamer objects consume``, as a handler on the runtime (Kafka or SQS source)."""

    name = "objects"

    def __init__(
        self,
        settings: ObjectsSettings,
        topics: TopicSettings,
        s3: S3Settings,
        *,
        codec: Codec,
    ) -> None:
        self.topics: Sequence[str] = (settings.objects_topic,)
        self.media_topic = topics.media_topic
        self.bucket = s3.s3_bucket
        self.prefix = s3.s3_prefix
        self.codec = codec

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.metrics = ObjectsMetrics(ctx.registry)

    async def decode(self, batch: Batch) -> ObjectsPlan:
        plan = ObjectsPlan()
        for msg in batch.messages:
            try:
                parsed = parse_notification(msg.value())
            except StreamerError as exc:
                plan.letters.append(self.ctx.dead_letter(msg, exc))
                plan.counts["dead_lettered"] += 1
                continue
            plan.counts.update(parsed.ignored)
            for change in parsed.changes:
                if change.bucket != self.bucket:
                    plan.counts["other_bucket"] += 1
                else:
                    plan.changes.append(change)
        return plan

    async def persist(self, tx: Transaction, plan: ObjectsPlan, effects: None = None) -> Output:
        upserted = await upsert_changes(tx.conn, plan.changes, source="notification")
        taken = [u.change for u in upserted]
        paths = {p for c in taken if (p := file_path_of(self.prefix, c.key)) is not None}
        galleries = await galleries_using(tx.conn, paths)
        output = Output(letters=list(plan.letters), counts=Counter(plan.counts))
        for r in plan_rechecks(taken, galleries, self.prefix):
            output.messages.append(
                OutputMessage(
                    topic=self.media_topic,
                    value=self.codec.encode_record(
                        recheck_record(r), type_name=RECHECK, topic=self.media_topic
                    ),
                    key=r.sku.encode(),
                    token=("recheck", r.event_id),
                    headers=tracing.sent_on(self.media_topic, ()),
                )
            )
        output.counts["indexed"] += len(upserted)
        output.counts["not_newer"] += len(plan.changes) - len(upserted)
        output.counts["rechecks"] += len(output.messages)
        output.detail = upserted
        return output

    def committed(self, plan: ObjectsPlan, effects: None, output: Output) -> None:
        m = self.metrics
        for result in ("indexed", "not_newer", "other_bucket", "test_event", "other_event"):
            if output.counts[result]:
                m.records.labels(result).inc(output.counts[result])
        m.rechecks.inc(output.counts["rechecks"])
        upserted: list[Upserted] = output.detail
        if upserted:
            now = datetime.now(UTC).timestamp()
            lags = [max(0.0, now - u.change.event_time.timestamp()) for u in upserted]
            for lag in lags:
                m.lag.observe(lag)
            m.last_lag.set(max(lags))
