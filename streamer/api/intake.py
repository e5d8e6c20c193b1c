"""The intake: a request's items validated, tracked, published and acknowledged, each one.

Validation, de-duplication (last wins per SKU) and normalisation are the contract's
ingest, exactly as ``streamer publish`` does them. Then, in this order:

1. the broker is asked for the topics (down: 503, nothing published, nothing tracked);
   an answer that found them holds for ``TOPICS_CHECKED_S``, or until a delivery fails
   (a broker lost within that window is met at step 3: 503, the items undeliverable);
2. the bulk and every item are written to PostgreSQL (down: 503, nothing published);
3. every accepted event is produced with a ``streamer.bulk.item`` header (and, while
   tracing is on, the request's ``traceparent``), and the delivery report of each one
   is awaited (served by one polling thread, handed to the waiting request's loop);
4. the bulk is settled: acknowledged items are tracked to completion, the others
   are named in the answer (503 with ``Retry-After``), never silently half-published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import KafkaError
from opentelemetry.trace import SpanKind

from streamer.api.metrics import ApiMetrics
from streamer.api.problems import RETRY_AFTER_S
from streamer.api.settings import ApiSettings
from streamer.contract.codec import Codec
from streamer.contract.errors import InvalidEvent
from streamer.contract.events import MediaGalleryChanged, ProductChanged
from streamer.contract.ingest import Ack, Ingested, VersionClock, parse_bulk, parse_jsonl
from streamer.contract.publishing import topic_for
from streamer.contract.topics import TopicSettings
from streamer.errors import DependencyUnavailable, StreamerError
from streamer.runtime import tracing
from streamer.runtime.database import Database
from streamer.runtime.errors import DatabaseUnavailable, DeliveryRefused, TopicMissing
from streamer.runtime.publisher import Publisher
from streamer.runtime.settings import KafkaSettings
from streamer.tracking.model import item_header
from streamer.tracking.store import NewItem, create_bulk, settle_bulk

__all__ = ["Intake", "IntakeReply", "RequestTooLarge", "parse_json"]

log = logging.getLogger(__name__)

Event = ProductChanged | MediaGalleryChanged
_DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
_FRAMING_BYTES = 512  # key, headers and batch overhead beside the value
# A check that found the broker and the topics holds this long (a check costs a new admin
# client and four metadata requests: most of a small request's CPU when made every time).
TOPICS_CHECKED_S = 5.0
# Up to this many items are parsed, encoded and produced on the event loop; a larger
# request goes to a thread, so that it does not hold the loop up.
_INLINE_ITEMS = 64
T = TypeVar("T")


async def _sized(items: int | None, work: Callable[[], T]) -> T:
    """``work`` on the event loop for a request of up to ``_INLINE_ITEMS`` items, else (or
    when the count is unknown) on a thread, so that a large request does not hold the loop."""
    if items is not None and items <= _INLINE_ITEMS:
        return work()
    return await asyncio.get_running_loop().run_in_executor(None, work)


class RequestTooLarge(InvalidEvent):
    reason = "too_many_items"


@dataclass
class IntakeReply:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def bulk_uuid(self) -> str | None:
        found = self.body.get("bulk_uuid")
        return str(found) if found else None


@dataclass(frozen=True)
class _Ready:
    ack: Ack
    event: Event
    topic: str
    value: bytes


def _items(acks: Sequence[Ack], event_ids: dict[int, str]) -> list[dict[str, Any]]:
    out = []
    for ack in acks:
        item = ack.as_dict()
        item["event_id"] = (
            event_ids.get(ack.id) if ack.status in ("accepted", "undeliverable") else None
        )
        out.append(item)
    return out


class Intake:
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        topics: TopicSettings,
        api: ApiSettings,
        database: Database,
        codec: Codec,
        metrics: ApiMetrics,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.api = api
        self.database = database
        self.codec = codec
        self.metrics = metrics
        self.publisher = Publisher(kafka)
        self._renewing = threading.Lock()
        self._topics_ok_until = 0.0
        self._checking = asyncio.Lock()
        self._polling = threading.Event()
        self._poller: threading.Thread | None = None
        self.clock = VersionClock()
        self.delivery_wait_s = kafka.delivery_timeout_ms / 1000 + 5
        limit = kafka.properties().get("message.max.bytes")
        self.max_value_bytes = int(limit or _DEFAULT_MESSAGE_MAX_BYTES) - _FRAMING_BYTES

    def start(self) -> None:
        self.publisher.start()
        self._polling.set()
        self._poller = threading.Thread(target=self._poll, name="intake-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        """Serve the delivery reports of every request, as they come (the current producer's:
        a replaced one is served by its own closing)."""
        while self._polling.is_set():
            try:
                self.publisher.poll(0.1)
            except Exception:  # the thread must live on: each request has its own deadline
                log.exception("serving the intake producer's delivery reports")
                time.sleep(0.1)

    def close(self) -> None:
        self._polling.clear()
        if self._poller is not None:
            self._poller.join(timeout=5.0)
        try:
            self.publisher.close(timeout_s=5.0)
        except StreamerError as exc:
            log.warning("closing the intake's producer: %s", exc)

    # -- the two formats --------------------------------------------------------------

    def _count(self, n: int, what: str) -> None:
        if n > self.api.api_max_items:
            raise RequestTooLarge(
                f"{n} {what}, over the limit of {self.api.api_max_items} per request "
                "(STREAMER_API_MAX_ITEMS); split the request"
            )

    async def bulk(self, payload: Any, *, source: str = "api") -> IntakeReply:
        """The gallery connector's bulk payload (``{"request": {"request_id", "items"}}``)."""
        if not isinstance(payload, dict):
            raise InvalidEvent(
                f"the body must be a JSON object, got {type(payload).__name__}",
                reason="malformed_bulk",
            )
        request = payload.get("request")
        items = request.get("items") if isinstance(request, dict) else None
        if isinstance(items, list):
            self._count(len(items), "items")

        def parse() -> tuple[Ingested, list[_Ready]]:
            return self._prepare(parse_bulk(payload, clock=self.clock, source=source))

        ingested, ready = await _sized(len(items) if isinstance(items, list) else None, parse)
        return await self._take("galleries", ingested, ready)

    async def events(
        self, text: str, request_id: str | None, *, source: str = "api"
    ) -> IntakeReply:
        """JSON lines of events; events without a request id get the request's."""
        lines = text.splitlines()
        self._count(sum(1 for line in lines if line.strip()), "lines")

        def parse() -> tuple[Ingested, list[_Ready]]:
            ingested = parse_jsonl(lines, clock=self.clock, source=source)
            rid = request_id or ingested.request_id or f"events-{uuid.uuid4()}"
            ingested.request_id = rid
            ingested.events = [
                (ack, e if e.request_id else e.model_copy(update={"request_id": rid}))
                for ack, e in ingested.events
            ]
            return self._prepare(ingested)

        ingested, ready = await _sized(len(lines), parse)
        return await self._take("events", ingested, ready)

    def _prepare(self, ingested: Ingested) -> tuple[Ingested, list[_Ready]]:
        """Encode every accepted event; one too large for the topic is rejected here."""
        ready: list[_Ready] = []
        for ack, event in ingested.events:
            topic = topic_for(event, self.topics)
            value = self.codec.encode(event, topic=topic)
            if len(value) > self.max_value_bytes:
                ack.status, ack.reason = "rejected", "too_large"
                ack.error_message = (
                    f"the encoded event is {len(value)} bytes, over the topic's limit of "
                    f"{self.max_value_bytes}; send fewer images per item"
                )
                continue
            ready.append(_Ready(ack, event, topic, value))
        return ingested, ready

    # -- track, publish, settle -----------------------------------------------------------

    async def _take(self, kind: str, ingested: Ingested, ready: list[_Ready]) -> IntakeReply:
        """The request as one span (the parent of every event's trace), around ``_track``."""
        attributes = {
            "streamer.bulk.kind": kind,
            "streamer.items": len(ingested.acks),
            "streamer.items.accepted": len(ready),
        }
        with tracing.span("bulk intake", attributes, kind=SpanKind.PRODUCER) as traced:
            reply = await self._track(kind, ingested, ready)
            if tracing.enabled():
                traced.set_attribute("streamer.bulk_uuid", reply.bulk_uuid or "")
                traced.set_attribute("streamer.request_id", str(reply.body.get("request_id", "")))
                if reply.status_code >= 500:
                    tracing.failed_with(traced, str(reply.body.get("reason", "unavailable")))
        return reply

    async def _track(self, kind: str, ingested: Ingested, ready: list[_Ready]) -> IntakeReply:
        request_id = ingested.request_id or f"bulk-{uuid.uuid4()}"
        event_ids = {r.ack.id: r.event.event_id for r in ready}
        if not ready:
            # A well-formed request whose every item is rejected is answered like any
            # other (as the gallery connector's async bulk does): each item says why.
            self._count_items(ingested.acks)
            return IntakeReply(
                202,
                {
                    "bulk_uuid": None,
                    "request_id": request_id,
                    "request_items": _items(ingested.acks, event_ids),
                    "errors": True,
                    "detail": "no item was accepted: nothing was published",
                },
            )
        try:
            await self._check_topics()
        except DependencyUnavailable as exc:
            log.warning("intake: %s", exc)
            return self._unavailable(
                "broker_unavailable", "Kafka is unavailable; nothing was published"
            )
        except TopicMissing as exc:
            log.error("intake: %s", exc)
            return self._unavailable(
                "topic_missing",
                "a topic of this deployment does not exist (an operator runs `streamer topics "
                "create`); nothing was published",
            )
        bulk_uuid = str(uuid.uuid4())
        new = [
            NewItem(
                a.id,
                a.sku,
                "publishing" if a.id in event_ids and a.status == "accepted" else a.status,
                a.reason,
                a.error_message,
                event_ids.get(a.id) if a.status == "accepted" else None,
            )
            for a in ingested.acks
        ]
        try:
            async with self.database.acquire() as conn:
                await create_bulk(
                    conn,
                    bulk_uuid=bulk_uuid,
                    request_id=request_id,
                    kind=kind,
                    items=new,
                    completion_topic=self.topics.import_completed_topic,
                    traceparent=tracing.current_traceparent(),
                )
        except DatabaseUnavailable as exc:
            log.warning("intake: tracking a bulk: %s", exc)
            return self._unavailable(
                "database_unavailable", "PostgreSQL is unavailable; nothing was published"
            )
        context = tracing.headers_of_current()
        failed = await self._publish(bulk_uuid, ready, context)
        for r in ready:
            if r.ack.id in failed:
                r.ack.status, r.ack.reason = "undeliverable", "delivery_failed"
                r.ack.error_message = failed[r.ack.id]
        delivered = [r.ack.id for r in ready if r.ack.id not in failed]
        body: dict[str, Any] = {
            "bulk_uuid": bulk_uuid,
            "request_id": request_id,
            "request_items": _items(ingested.acks, event_ids),
            "errors": ingested.errors,
        }
        tracking_error = await self._settle(bulk_uuid, delivered, failed)
        if tracking_error:
            body["tracking_error"] = tracking_error
        self._count_items(ingested.acks)
        if failed:
            went_out = (
                f"the other {len(delivered)} were published and are tracked"
                if delivered
                else "none was published"
            )
            body["reason"] = "undeliverable"
            body["detail"] = (
                f"{len(failed)} of {len(ready)} accepted items were not acknowledged by the broker "
                f"(status undeliverable; sending them again is safe); {went_out}"
            )
            return IntakeReply(503, body, {"Retry-After": str(RETRY_AFTER_S)})
        accepted = len(delivered)
        body["detail"] = f"{accepted} of {len(ingested.acks)} items accepted and published" + (
            "; the others are named with their reason" if ingested.errors else ""
        )
        return IntakeReply(202, body)

    async def _check_topics(self) -> None:
        """The broker and the topics, asked at most once per ``TOPICS_CHECKED_S``."""
        if time.monotonic() < self._topics_ok_until:
            return
        async with self._checking:  # one check at a time; the others wait for its answer
            if time.monotonic() < self._topics_ok_until:
                return
            topics = [self.topics.product_topic, self.topics.media_topic]
            await asyncio.get_running_loop().run_in_executor(
                None, self.publisher.check_topics, topics
            )
            self._topics_ok_until = time.monotonic() + TOPICS_CHECKED_S

    async def _publish(
        self, bulk_uuid: str, ready: Sequence[_Ready], context: list[tuple[str, bytes]]
    ) -> dict[int, str]:
        """Produce every event and wait for each one's report; returns item id -> error.

        ``context``: the request's trace headers, on every event (none while tracing is off).

        The reports are served by the polling thread (``_poll``); the last one wakes this
        request up. After a failed delivery the producer is replaced: an idempotent producer
        whose requests timed out may be fenced by the broker for good (seen with Tansu), and
        a new one starts with a new producer id. Requests still waiting on the old one get
        their reports when it is closed.
        """
        loop = asyncio.get_running_loop()
        publisher = self.publisher
        reports: dict[int, str | None] = {}
        every_report = loop.create_future()

        def wake() -> None:
            if not every_report.done():
                every_report.set_result(None)

        def counted() -> None:
            if len(reports) >= len(ready):
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(wake)

        def report(item_id: int, err: KafkaError | None, _msg: Any) -> None:
            reports[item_id] = (
                None if err is None else f"not acknowledged by the broker: {err.str()}"
            )
            counted()

        def produce() -> None:
            for r in ready:
                try:
                    publisher.produce(
                        r.topic,
                        r.value,
                        key=r.event.sku.encode(),
                        headers=[item_header(bulk_uuid, r.ack.id), *context],
                        on_delivery=functools.partial(report, r.ack.id),
                    )
                except DeliveryRefused as exc:
                    reports[r.ack.id] = f"refused by the producer: {exc.message}"
            counted()

        await _sized(len(ready), produce)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(every_report, self.delivery_wait_s)
        seen = dict(reports)
        failed = {item: error for item, error in seen.items() if error is not None}
        for r in ready:
            if r.ack.id not in seen:
                failed[r.ack.id] = (
                    f"no delivery report within {self.delivery_wait_s:.0f}s; it may still arrive"
                )
        if failed:
            self._topics_ok_until = 0.0  # the next request asks the broker again
            await loop.run_in_executor(None, self._renew, publisher)
        return failed

    def _renew(self, broken: Publisher) -> None:
        with self._renewing:
            if self.publisher is not broken:
                return  # another request renewed it already
            fresh = Publisher(self.kafka)
            fresh.start()
            self.publisher = fresh
        log.warning("deliveries failed: the intake's producer is replaced by a new one")
        threading.Thread(
            target=self._close, args=(broken,), name="close-producer", daemon=True
        ).start()

    def _close(self, publisher: Publisher) -> None:
        try:
            publisher.close(timeout_s=self.delivery_wait_s)
        except StreamerError as exc:
            log.info("the replaced producer closed with undelivered messages: %s", exc)

    async def _settle(
        self, bulk_uuid: str, delivered: list[int], failed: dict[int, str]
    ) -> str | None:
        """Record what went out; a few tries, since the events are out whatever happens here."""
        for attempt in range(3):
            try:
                async with self.database.acquire() as conn:
                    await settle_bulk(conn, bulk_uuid, delivered=delivered, undeliverable=failed)
                return None
            except DatabaseUnavailable as exc:
                log.warning("settling bulk %s (attempt %d): %s", bulk_uuid, attempt + 1, exc)
                await asyncio.sleep(0.5 * (attempt + 1))
        return (
            "the items were published but their tracking could not be recorded "
            "(PostgreSQL unavailable): this bulk will not report completion"
        )

    def _count_items(self, acks: Sequence[Ack]) -> None:
        counts: dict[str, int] = {}
        for ack in acks:
            counts[ack.status] = counts.get(ack.status, 0) + 1
        for status, n in counts.items():
            self.metrics.items.labels(status).inc(n)

    @staticmethod
    def _unavailable(reason: str, message: str) -> IntakeReply:
        return IntakeReply(
            503, {"reason": reason, "detail": message}, {"Retry-After": str(RETRY_AFTER_S)}
        )


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or ``InvalidEvent`` naming where it breaks."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            f"the body is not UTF-8: {exc.reason} at byte {exc.start}", reason="malformed_json"
        ) from exc
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(character {exc.pos})",
            reason="malformed_json",
        ) from exc
