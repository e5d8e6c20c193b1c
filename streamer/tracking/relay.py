"""The completion relay: exactly one ``ImportCompleted`` per bulk, across crashes and takeovers.

Why not a Kafka transaction: the dev broker (Tansu) hands aborted and still-open
transactional records to ``read_committed`` readers, so an aborted attempt would still
be seen. Exactly one comes from three things instead:

1. **One leader per database.** A process publishes only while it holds a PostgreSQL
   advisory lock on its own connection (the lock dies with the session). Several
   deployments may share a database: each bulk names the completion topic of the
   deployment that took it in (``bulks.completion_topic``), and the leader publishes
   every bulk's event there, whichever deployment the leader belongs to. Completion itself is found
   and queued in one transaction (``store.find_completed``: the ``completed_at`` guard
   and the outbox's key make it once, whoever runs it).
2. **A fence on takeover.** Every message is produced with a delivery bound
   ``T = STREAMER_COMPLETION_DELIVERY_TIMEOUT_S`` and only right after the leader saw
   its lock session alive. A new leader waits ``T`` + 1 s after taking the lock: by
   then anything an earlier leader sent has landed or never will.
3. **Reading back.** The new leader then reads every topic with events still queued
   (and its own) from the positions recorded with the last publication to the end, and marks every bulk it finds there as
   published before it publishes anything. A crash between the broker's
   acknowledgment and the ``published_at`` record therefore never publishes twice,
   and a crash before the acknowledgment publishes once, later.

The event id is derived from the bulk (``completion_event_id``), so even a reader of
an at-least-once copy of the topic can tell. What this cannot fence: a leader frozen
for longer than the fence between its lock check and its ``produce`` call (the same
assumption any lease makes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from streamer.contract.codec import Codec
from streamer.contract.errors import DecodeError
from streamer.errors import StreamerError
from streamer.runtime import tracing
from streamer.runtime.database import converted
from streamer.runtime.errors import TopicMissing
from streamer.runtime.publisher import Publisher
from streamer.runtime.readback import read_messages
from streamer.runtime.settings import DatabaseSettings, KafkaSettings
from streamer.tracking.metrics import TrackingMetrics
from streamer.tracking.settings import TrackingSettings
from streamer.tracking.store import (
    NOTIFY_CHANNEL,
    Pending,
    find_completed,
    mark_published,
    read_positions,
    unpublished,
    unpublished_topics,
)

__all__ = ["CompletionRelay"]

log = logging.getLogger(__name__)

FENCE_MARGIN_S = 1.0


def _lock_key() -> int:
    """One key per database: completion is found for every bulk of it, whatever its topic."""
    digest = hashlib.sha256(b"streamer.completion-relay").digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _wait(stop: asyncio.Event, timeout_s: float, wake: asyncio.Event | None = None) -> None:
    """Until ``stop`` (or ``wake``) is set, or ``timeout_s`` passed."""
    waiters = {asyncio.ensure_future(stop.wait())}
    if wake is not None:
        waiters.add(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class CompletionRelay:
    """``await run(stop)``: leads when it can, publishes what completes, until ``stop``."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        database: DatabaseSettings,
        topic: str,
        settings: TrackingSettings,
        codec: Codec,
        metrics: TrackingMetrics | None = None,
    ) -> None:
        self.kafka = kafka
        self.database = database
        self.topic = topic
        self.settings = settings
        self.codec = codec
        self.metrics = metrics
        self.lock_key = _lock_key()
        self.leading = False
        self._missing: set[str] = set()
        self._present: set[str] = set()  # topics seen this tenure: not asked again
        self.published = 0
        self.recovered = 0

    @property
    def fence_s(self) -> float:
        return self.settings.completion_delivery_timeout_s + FENCE_MARGIN_S

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._lead(stop)
            except StreamerError as exc:
                log.warning("completion relay: %s; trying again", exc)
            finally:
                self._set_leading(False)
            await _wait(stop, self.settings.completion_poll_interval_s)

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        if self.metrics is not None:
            self.metrics.leader.set(1 if leading else 0)

    async def _lead(self, stop: asyncio.Event) -> None:
        async with converted():
            conn = await asyncpg.connect(
                self.database.dsn, timeout=self.database.database_timeout_s
            )
        try:
            async with converted():
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key):
                    return
            self._set_leading(True)
            self._missing.clear()
            self._present.clear()
            if self.metrics is not None:
                self.metrics.takeovers.inc()
            log.info(
                "completion relay: leading; fencing for %.0fs before reading back", self.fence_s
            )
            wake = asyncio.Event()
            async with converted():
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
            await self._fence(conn, stop, wake)
            if stop.is_set():
                return
            publisher = Publisher(
                self.kafka,
                producer_config={
                    "message.timeout.ms": int(self.settings.completion_delivery_timeout_s * 1000),
                    "delivery.timeout.ms": int(self.settings.completion_delivery_timeout_s * 1000),
                    "request.timeout.ms": int(
                        min(30.0, self.settings.completion_delivery_timeout_s) * 1000
                    ),
                },
            )
            publisher.start()
            try:
                await self._read_back(conn)
                while not stop.is_set():
                    wake.clear()
                    await self.cycle(conn, publisher)
                    await _wait(stop, self.settings.completion_poll_interval_s, wake)
            finally:
                with contextlib.suppress(StreamerError):
                    await asyncio.get_running_loop().run_in_executor(
                        None, lambda: publisher.close(timeout_s=1.0)
                    )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    async def _fence(
        self, conn: asyncpg.Connection, stop: asyncio.Event, wake: asyncio.Event
    ) -> None:
        """Wait out the fence; meanwhile bulks are still found complete (queued, not sent),
        so the API shows them complete without waiting for the event."""
        until = time.monotonic() + self.fence_s
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            wake.clear()
            await find_completed(conn, default_topic=self.topic)
            await _wait(stop, min(left, self.settings.completion_poll_interval_s), wake)

    async def _read_back(self, conn: asyncpg.Connection) -> None:
        """Mark what earlier leaders published but did not record, from the recorded positions
        of every topic that still has events queued."""
        for topic in await unpublished_topics(conn, default_topic=self.topic):
            try:
                await self._read_back_topic(conn, topic)
            except TopicMissing as exc:
                log.warning("completion relay: cannot read %s back: %s", topic, exc)

    async def _read_back_topic(self, conn: asyncpg.Connection, topic: str) -> None:
        start = await read_positions(conn, topic)
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(
            None, lambda: list(read_messages(self.kafka, topic, start=start, strict=True))
        )
        found: list[str] = []
        ends: dict[int, int] = {}
        for msg in messages:
            ends[msg.partition() or 0] = (msg.offset() or 0) + 1
            try:
                decoded = self.codec.decode(msg.value())
            except DecodeError as exc:
                log.warning("completion relay: unreadable message on %s: %s", topic, exc)
                continue
            found.append(str(decoded.data["bulk_uuid"]))
        marked = await mark_published(conn, topic, found, ends)
        self.recovered += marked
        if self.metrics is not None:
            self.metrics.recovered.inc(marked)
        log.info(
            "completion relay: read %d event(s) back from %s, %d had not been recorded",
            len(found),
            topic,
            marked,
        )

    async def cycle(self, conn: asyncpg.Connection, publisher: Publisher) -> int:
        """Queue what completed, publish what is queued; returns how many were published."""
        await find_completed(conn, default_topic=self.topic)
        queued = await unpublished(conn, default_topic=self.topic)
        if not queued:
            return 0
        loop = asyncio.get_running_loop()
        pending = await loop.run_in_executor(None, self._deliverable, publisher, queued)
        if not pending:
            return 0
        async with converted():
            await conn.fetchval("SELECT 1")  # the lock's session is alive: still the leader
        pending = [  # each bulk's ImportCompleted is sent on in the bulk's trace
            dataclasses.replace(
                p, headers=tracing.resent(p.topic, [(tracing.TRACEPARENT, p.traceparent.encode())])
            )
            if p.traceparent
            else p
            for p in pending
        ]
        ends = await loop.run_in_executor(None, self._send, publisher, pending)
        for topic in sorted({p.topic for p in pending}):
            await mark_published(
                conn,
                topic,
                [p.bulk_uuid for p in pending if p.topic == topic],
                {part: end for (t, part), end in ends.items() if t == topic},
            )
        self.published += len(pending)
        if self.metrics is not None:
            self.metrics.completed.inc(len(pending))
            now = datetime.now(UTC)
            for p in pending:
                if p.last_processed_at is not None:
                    self.metrics.completion_delay.observe(
                        max(0.0, (now - p.last_processed_at).total_seconds())
                    )
        return len(pending)

    def _deliverable(self, publisher: Publisher, queued: Sequence[Pending]) -> list[Pending]:
        """The queued events whose topic exists; a deployment whose completion topic is gone
        holds up its own bulks (said once per tenure), never the others'."""
        ready: list[Pending] = []
        for topic in sorted({p.topic for p in queued}):
            if topic in self._missing:
                continue
            try:
                if topic not in self._present:
                    publisher.check_topics([topic])
                    self._present.add(topic)
            except TopicMissing as exc:
                self._missing.add(topic)
                log.warning(
                    "completion relay: %s; its bulks' ImportCompleted wait until it exists", exc
                )
                continue
            ready.extend(p for p in queued if p.topic == topic)
        return ready

    def _send(self, publisher: Publisher, pending: Sequence[Pending]) -> dict[tuple[str, int], int]:
        """Produce and wait for every acknowledgment; a failure raises (and ends this tenure)."""
        started = time.monotonic()
        for p in pending:
            publisher.produce(
                p.topic,
                self.codec.encode_record(p.record, type_name="ImportCompleted", topic=p.topic),
                key=p.bulk_uuid.encode(),
                headers=p.headers,
            )
        publisher.flush(timeout_s=self.settings.completion_delivery_timeout_s + 5)
        log.debug("published %d completion(s) in %.3fs", len(pending), time.monotonic() - started)
        topics = {p.topic for p in pending}
        return {tp: end for tp, end in publisher.end_offsets.items() if tp[0] in topics}
