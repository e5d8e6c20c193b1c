"""The objects job: bucket notifications in, the object index and gallery re-checks out.

1. ``prepare``: parse every message into object changes (``objectindex.records``); what is
   not a notification is dead-lettered with its reason; records of other buckets, S3's
   test event and events that change no bytes (tags, ACLs, restores) are counted.
2. ``write`` (inside the checkpoint's transaction): upsert each key's newest change where it
   is newer than the index row (out-of-order and duplicate deliveries change nothing);
   for the changes taken, find the galleries whose stored image differs (by the
   ``gallery_images`` path index) and return one ``GalleryRecheck`` per SKU, keyed by SKU,
   on the media topic: the checkpoint publishes them before it commits the index rows.
   The gallery job applies them in its partition's order: it stays the only writer.
"""

from __future__ import annotations

import time
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
from streamer.runtime.handler import Batch, HandlerContext, Output, OutputMessage
from streamer.storage.settings import S3Settings

__all__ = ["ObjectsHandler", "ObjectsPlan"]


@dataclass
class ObjectsPlan:
    changes: list[ObjectChange] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    taken: list[Upserted] = field(default_factory=list)
    rechecks: int = 0


class ObjectsHandler:
    """``streamer objects consume``, as a handler on the runtime (or behind the SQS source)."""

    name = "objects"
    dependencies: Sequence[str] = ()

    def __init__(
        self,
        settings: ObjectsSettings,
        topics: TopicSettings,
        s3: S3Settings,
        *,
        codec: Codec,
    ) -> None:
        self.group_id = settings.objects_group_id
        self.topics: Sequence[str] = (settings.objects_topic,)
        self.media_topic = topics.media_topic
        self.bucket = s3.s3_bucket
        self.prefix = s3.s3_prefix
        self.codec = codec
        self.totals: Counter[str] = Counter()

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.metrics = ObjectsMetrics(ctx.registry)

    async def stop(self) -> None:
        return None

    async def prepare(self, batch: Batch) -> ObjectsPlan:
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

    async def plan(self, prepared: ObjectsPlan) -> ObjectsPlan:
        return prepared

    async def write(self, tx: Transaction, plan: ObjectsPlan) -> Output:
        plan.taken = await upsert_changes(tx.conn, plan.changes, source="notification")
        taken = [u.change for u in plan.taken]
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
        plan.rechecks = len(output.messages)
        output.counts["indexed"] += len(plan.taken)
        output.counts["not_newer"] += len(plan.changes) - len(plan.taken)
        output.counts["rechecks"] += plan.rechecks
        return output

    def committed(self, plan: ObjectsPlan, output: Output) -> None:
        m = self.metrics
        for result in ("indexed", "not_newer", "other_bucket", "test_event", "other_event"):
            if output.counts[result]:
                m.records.labels(result).inc(output.counts[result])
        m.rechecks.inc(plan.rechecks)
        if plan.taken:
            now = datetime.now(UTC).timestamp()
            lags = [max(0.0, now - u.change.event_time.timestamp()) for u in plan.taken]
            for lag in lags:
                m.lag.observe(lag)
            m.last_lag.set(max(lags))
        self.totals.update(output.counts)
        self.totals["batches"] += 1
        self.last_commit = time.monotonic()
