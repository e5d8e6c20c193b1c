"""One pass over a batch's deliveries: concurrent, paced, each SKU in order.

``Dispatcher.deliver`` sends every delivery not finished yet (see ``Ledger``) once:

- at most ``max_in_flight`` requests at a time, started no faster than the ``Pacer``;
- a delivery waits for the earlier deliveries that carry one of its SKUs, and is not
  sent in this pass if one of them is not finished (delivered or dead-lettered): a
  SKU's deliveries reach the receiver in order, whatever runs in parallel;
- the pass stops starting requests once ``failure_threshold`` requests in a row failed,
  or while a receiver's ``Retry-After`` holds: an outage costs a few requests, not one
  timeout per delivery, and nothing is sent before the receiver asked.

What is left raises a retriable error: ``WebhookUnavailable`` when nothing got through
(counted by the webhook circuit), ``WebhookDeliveriesLeft`` when the receiver took
other deliveries (not counted: the endpoint is up). The runtime retries the pass with
backoff (never sooner than ``retry_after_s``) and, past its attempts or once the
circuit opens, pauses the partitions and keeps the batch in hand. A 410 Gone disables
every further request (``WebhookDisabled``) until the process restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind

from streamer.forward.client import WebhookClient
from streamer.forward.errors import WebhookDeliveriesLeft, WebhookDisabled, WebhookUnavailable
from streamer.forward.ledger import Ledger
from streamer.forward.metrics import ForwardMetrics
from streamer.forward.pacing import Pacer
from streamer.forward.payloads import Delivery
from streamer.forward.responses import Answer
from streamer.runtime import tracing

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


@dataclass
class _Pass:
    failures_in_a_row: int = 0
    accepted: int = 0


class Dispatcher:
    def __init__(
        self,
        client: WebhookClient,
        pacer: Pacer,
        ledger: Ledger,
        metrics: ForwardMetrics,
        *,
        max_in_flight: int,
        failure_threshold: int,
    ) -> None:
        self.client = client
        self.pacer = pacer
        self.ledger = ledger
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.failure_threshold = failure_threshold
        self.disabled: str | None = None
        metrics.rate.set(pacer.rate)

    async def deliver(self, deliveries: Sequence[Delivery]) -> None:
        """Send what is not finished; raise a retriable error naming what is left, if anything."""
        self._refuse_if_disabled()
        todo = [d for d in deliveries if not self.ledger.finished(d.webhook_id)]
        if not todo:
            return
        before: list[list[int]] = []
        last_of: dict[str, int] = {}
        for i, delivery in enumerate(todo):
            before.append(sorted({last_of[s] for s in delivery.skus if s in last_of}))
            for sku in delivery.skus:
                last_of[sku] = i
        settled = [asyncio.Event() for _ in todo]
        slots = asyncio.Semaphore(self.max_in_flight)
        state = _Pass()

        async def one(i: int, delivery: Delivery) -> None:
            try:
                for j in before[i]:
                    await settled[j].wait()
                if not all(self.ledger.finished(todo[j].webhook_id) for j in before[i]):
                    return  # an earlier delivery of its SKU is not through: keep the order
                if self.ledger.finished(delivery.webhook_id):
                    return  # the same id twice in a batch (a re-published event)
                async with slots:
                    if self._stopping(state):
                        return
                    wait = self.pacer.reserve()
                    if wait > 0:
                        self.metrics.rate_limited.inc()
                        await asyncio.sleep(wait)
                        if self._stopping(state):
                            return
                    await self._send(delivery, state)
            finally:
                settled[i].set()

        await asyncio.gather(*(one(i, d) for i, d in enumerate(todo)))
        self._refuse_if_disabled()
        left = [d for d in todo if not self.ledger.finished(d.webhook_id)]
        if left:
            raise self._left(left, state)

    def _stopping(self, state: _Pass) -> bool:
        if self.disabled is not None or state.failures_in_a_row >= self.failure_threshold:
            return True
        if self.pacer.hold_remaining_s() > 0:
            self.metrics.rate_limited.inc()  # held back by the receiver's Retry-After
            return True
        return False

    async def _send(self, delivery: Delivery, state: _Pass) -> None:
        started = self.ledger.started(delivery.webhook_id)
        self.metrics.in_flight.inc()
        attributes = {
            "http.request.method": "POST",
            "server.address": self.client.host,
            "streamer.webhook.id": delivery.webhook_id,
            "streamer.events": len(delivery.items),
        }
        try:
            with tracing.span_after(
                "webhook POST", delivery.messages, attributes, kind=SpanKind.CLIENT
            ) as sending:
                answer = await self.client.post(
                    delivery.webhook_id, delivery.body, trace=tracing.http_headers_of(sending)
                )
                _traced(sending, answer)
        finally:
            self.metrics.in_flight.dec()
        self.metrics.requests.labels(answer.result).inc()
        self.metrics.latency.observe(answer.elapsed_s)
        entry = self.ledger.record(delivery.webhook_id, answer, started)
        self._pace(answer)
        if answer.kind == "delivered":
            state.failures_in_a_row = 0
            state.accepted += 1
        elif answer.kind == "refused":
            state.failures_in_a_row = 0
        elif answer.kind == "gone":
            self._disable(answer)
        else:
            state.failures_in_a_row += 1
        if answer.kind != "delivered":
            log.warning(
                "webhook delivery %s (%d events, attempt %d): %s%s",
                delivery.webhook_id,
                len(delivery.items),
                entry.count,
                answer.description,
                " -> dead-lettered" if entry.final in ("refused", "failing") else "",
            )

    def _pace(self, answer: Answer) -> None:
        if answer.result == "429":
            self.pacer.throttled(answer.retry_after_s)
            self.metrics.rate.set(self.pacer.rate)
        elif answer.retry_after_s:
            self.pacer.hold(answer.retry_after_s)
        elif answer.kind == "delivered" and self.pacer.rate < self.pacer.configured:
            self.pacer.accepted()
            self.metrics.rate.set(self.pacer.rate)

    def _disable(self, answer: Answer) -> None:
        if self.disabled is None:
            self.disabled = (
                f"webhook delivery disabled: {self.client.origin} answered {answer.description}; "
                "nothing more is sent and no offset moves until STREAMER_WEBHOOK_URL is fixed "
                "and the forwarder restarted"
            )
            self.metrics.disabled.set(1)
            log.error("%s", self.disabled)

    def _refuse_if_disabled(self) -> None:
        if self.disabled is not None:
            raise WebhookDisabled(self.disabled)

    def _left(self, left: list[Delivery], state: _Pass) -> WebhookUnavailable:
        entries = [e for d in left if (e := self.ledger.get(d.webhook_id)) is not None]
        answers = [e.last for e in entries if e.last is not None]
        waits = [a.retry_after_s for a in answers if a.retry_after_s]
        hold = self.pacer.hold_remaining_s()
        wait = max([*waits, hold]) if waits or hold > 0 else None
        last = answers[-1].description if answers else "not sent: waiting for earlier deliveries"
        # The receiver took something since these were first tried: the endpoint is up.
        up = state.accepted > 0 or any(
            e.count and self.ledger.last_success >= e.first_started for e in entries
        )
        kind = WebhookDeliveriesLeft if up else WebhookUnavailable
        message = (
            f"{len(left)} webhook deliveries to {self.client.origin} not through yet "
            f"(last answer: {last})"
        )
        return kind(message, retry_after_s=wait)


def _traced(sending: Any, answer: Answer) -> None:
    """The answer on the delivery's span: its status and result, failed unless delivered."""
    if not tracing.enabled():
        return
    if answer.status is not None:
        sending.set_attribute("http.response.status_code", answer.status)
    sending.set_attribute("streamer.webhook.result", answer.result)
    if answer.kind != "delivered":
        tracing.failed_with(sending, answer.result)
