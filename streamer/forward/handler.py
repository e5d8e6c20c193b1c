"""The webhook forwarder as a handler on the runtime: outcome events in, signed HTTP deliveries out.

- ``prepare``: decode each message (``GalleryUpdated`` from the outcome topic, and
  ``ProductChanged`` from the product topic when ``STREAMER_FORWARD_PRODUCT_EVENTS``
  is on); what cannot be decoded is set aside for the dead-letter topic with its
  reason. The events become deliveries (``payloads.pack``), per partition in offset
  order, so each SKU's events keep their order.
- ``plan``: deliver them (``Dispatcher``) through ``ctx.call("webhook", ...)``: the
  runtime retries with backoff and jitter, never sooner than a ``Retry-After``, counts
  outages on the webhook circuit and pauses the partitions while it is open. ``plan``
  returns only once every delivery got a 2xx or was given up for the dead letters.
- ``write``: no rows; the dead letters (undecodable events, refused or failing
  deliveries with status, response excerpt, attempts and times) are published by the
  checkpoint, acknowledged, and only then do the offsets move past them.

Offsets therefore pass an event only once the receiver answered 2xx or its dead letter
was acknowledged. A crash in between re-sends the same body under the same
``webhook-id`` (at least once; receivers de-duplicate on it). Within the batch in hand,
what already got a 2xx is not sent again when the batch is retried (``Ledger``).

A 410 Gone disables delivery: no request is sent again, the partitions stay paused
with their offsets where they are (nothing is lost or dead-lettered), readiness names
the reason and ``streamer_webhook_disabled`` is 1. After fixing the receiver or
``STREAMER_WEBHOOK_URL``, restart the forwarder: it resumes from the stored offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import Message

from streamer.contract.codec import Codec
from streamer.contract.errors import InvalidEvent
from streamer.contract.events import ProductChanged
from streamer.contract.topics import TopicSettings
from streamer.errors import NonRetriableError, StreamerError
from streamer.forward.client import WebhookClient
from streamer.forward.dispatch import Dispatcher
from streamer.forward.errors import (
    UnexpectedEvent,
    WebhookFailing,
    WebhookRefused,
    WebhookUnauthorized,
)
from streamer.forward.ledger import Attempts, Ledger
from streamer.forward.metrics import ForwardMetrics
from streamer.forward.pacing import Pacer
from streamer.forward.payloads import Delivery, Item, gallery_item, pack, product_item
from streamer.forward.settings import ForwardSettings
from streamer.forward.signing import SigningKeys
from streamer.runtime.deadletters import DeadLetter
from streamer.runtime.handler import Batch, HandlerContext, Output, SimpleHandler

if TYPE_CHECKING:
    from streamer.runtime.checkpoint import Transaction

__all__ = ["ForwardHandler", "ForwardPlan"]

TopicPartition = tuple[str, int]


@dataclass
class ForwardPlan:
    deliveries: list[Delivery] = field(default_factory=list)
    rejects: list[tuple[Message, StreamerError]] = field(default_factory=list)


class ForwardHandler(SimpleHandler[ForwardPlan]):
    """Effects: the deliveries. Each is idempotent at the receiver by its ``webhook-id``
    (also ``Idempotency-Key``), which depends only on the events it carries, so a batch
    delivered again after a crash, a retry or a redelivery is recognised there."""

    name = "forward"
    dependencies = ("webhook",)

    def __init__(
        self,
        settings: ForwardSettings,
        topics: TopicSettings,
        *,
        codec: Codec,
        failure_threshold: int = 3,
        client: WebhookClient | None = None,
    ) -> None:
        self.settings = settings
        self.outcome_topic = topics.outcome_topic
        self.product_topic = topics.product_topic if settings.forward_product_events else None
        self.topics = tuple(t for t in (self.outcome_topic, self.product_topic) if t)
        self.codec = codec
        self.failure_threshold = failure_threshold
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        self.client = client or WebhookClient(settings, SigningKeys.from_setting(secret))
        self.ledger = Ledger(settings.webhook_max_attempts)
        self.pacer = Pacer(settings.webhook_rate_per_s)
        self.metrics: ForwardMetrics | None = None
        self.dispatcher: Dispatcher | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.metrics = ForwardMetrics(ctx.registry)
        self.dispatcher = Dispatcher(
            self.client,
            self.pacer,
            self.ledger,
            self.metrics,
            max_in_flight=self.settings.webhook_max_in_flight,
            failure_threshold=self.failure_threshold,
        )
        await self.client.start()

    async def stop(self) -> None:
        await self.client.close()

    @property
    def disabled(self) -> str | None:
        return self.dispatcher.disabled if self.dispatcher is not None else None

    def not_ready(self) -> list[str]:
        return [self.disabled] if self.disabled is not None else []

    # -- the steps ------------------------------------------------------------------------

    async def decode(self, batch: Batch) -> ForwardPlan:
        plan = ForwardPlan()
        items: dict[str, Item] = {}
        by_partition: dict[TopicPartition, list[Item]] = {}
        for msg in batch.messages:
            try:
                item = self._item(msg)
            except NonRetriableError as exc:
                plan.rejects.append((msg, exc))
                continue
            known = items.get(item.event_id)
            if known is not None:  # re-published: delivered once, with both messages
                known.messages.append(msg)
                continue
            item.messages.append(msg)
            items[item.event_id] = item
            tp = (msg.topic() or "", msg.partition() or 0)
            by_partition.setdefault(tp, []).append(item)
        s = self.settings
        for partition_items in by_partition.values():
            plan.deliveries += pack(
                partition_items,
                max_events=s.webhook_batch_max_events,
                max_bytes=s.webhook_batch_max_bytes,
            )
        return plan

    def _item(self, msg: Message) -> Item:
        if msg.topic() == self.product_topic:
            event = self.codec.decode_event(msg.value())
            if not isinstance(event, ProductChanged):
                raise UnexpectedEvent(
                    f"{event.type.value} on the product topic; the forwarder delivers "
                    "ProductChanged from it"
                )
            return product_item(event.model_dump(mode="json", exclude={"type"}))
        decoded = self.codec.decode(msg.value())
        if decoded.type_name != "GalleryUpdated":
            raise UnexpectedEvent(
                f"{decoded.type_name} on the outcome topic; the forwarder delivers GalleryUpdated"
            )
        try:
            return gallery_item(decoded.data)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidEvent(f"GalleryUpdated cannot be delivered: {exc!r}") from exc

    async def effects(self, plan: ForwardPlan) -> None:
        """Deliver (the ledger keeps each delivery's attempts and answer, for ``persist``)."""
        dispatcher = self.dispatcher
        assert dispatcher is not None, "start() was not called"
        if plan.deliveries:
            await self.ctx.call("webhook", lambda: dispatcher.deliver(plan.deliveries))

    async def persist(self, tx: Transaction, plan: ForwardPlan, effects: None) -> Output:
        output = Output()
        for msg, error in plan.rejects:
            output.letters.append(self.ctx.dead_letter(msg, error, details=_sku(_key(msg))))
            output.counts["undeliverable"] += 1
        for delivery in plan.deliveries:
            entry = self.ledger.get(delivery.webhook_id)
            if entry is None or entry.final == "delivered":
                output.counts["delivered"] += len(delivery.items)
                continue
            output.letters += self._letters(delivery, entry)
            output.counts["dead_lettered"] += len(delivery.items)
        return output

    def _letters(self, delivery: Delivery, entry: Attempts) -> list[DeadLetter]:
        answer = entry.last
        assert answer is not None and entry.final in ("refused", "failing")
        origin = self.client.origin
        error: StreamerError
        if entry.final == "failing":
            error = WebhookFailing(
                f"{origin} did not take this delivery in {entry.count} attempts while it "
                f"accepted others; last answer: {answer.description}"
            )
        elif answer.status in (401, 403):
            error = WebhookUnauthorized(f"{origin} refused the delivery: {answer.description}")
        else:
            error = WebhookRefused(f"{origin} refused the delivery: {answer.description}")
        details = {
            "webhook.id": delivery.webhook_id,
            "webhook.url": origin,
            "webhook.status": str(answer.status or ""),
            "webhook.result": answer.result,
            "webhook.attempts": str(entry.count),
            "webhook.first_attempt": str(entry.first_wall_ms),
            "webhook.last_attempt": str(entry.last_wall_ms),
            "webhook.response": answer.excerpt,
            "webhook.batch_events": str(len(delivery.items)),
        }
        return [
            self.ctx.dead_letter(msg, error, details={**details, "sku": item.sku})
            for item in delivery.items
            for msg in item.messages
        ]

    def committed(self, plan: ForwardPlan, effects: None, output: Output) -> None:
        metrics = self.metrics
        assert metrics is not None
        seen: set[str] = set()
        for delivery in plan.deliveries:
            entry = self.ledger.get(delivery.webhook_id)
            if entry is None or entry.final is None or delivery.webhook_id in seen:
                continue
            seen.add(delivery.webhook_id)
            metrics.deliveries.labels(entry.final).inc()
            metrics.events.labels(entry.final).inc(len(delivery.items))
            metrics.attempts.observe(entry.count)
        self.ledger.clear()


def _sku(key: str | None) -> dict[str, str] | None:
    return {"sku": key} if key else None


def _key(msg: Message) -> str | None:
    key: Any = msg.key()
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else None
