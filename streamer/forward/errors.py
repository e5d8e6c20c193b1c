"""The forwarder's errors: what makes it wait (retriable) and what sends a delivery to the dead letters.

They extend the shared hierarchy in ``streamer.errors``: ``retriable`` on the class, a
stable ``reason`` for dead letters, and the ``dependency`` whose circuit breaker counts
the retriable ones.
"""

from __future__ import annotations

from streamer.contract.errors import DecodeError
from streamer.errors import DependencyUnavailable, NonRetriableError

__all__ = [
    "UnexpectedEvent",
    "WebhookDeliveriesLeft",
    "WebhookDisabled",
    "WebhookFailing",
    "WebhookRefused",
    "WebhookUnauthorized",
    "WebhookUnavailable",
]


class WebhookUnavailable(DependencyUnavailable):
    """The receiver did not take the batch's deliveries (down, timing out, 5xx, 429, redirecting)."""

    dependency = "webhook"
    reason = "webhook_unavailable"


class WebhookDeliveriesLeft(WebhookUnavailable):
    """Some deliveries failed while the receiver accepted others: retried and paused like an
    outage, but not counted by the webhook circuit (the endpoint is up)."""

    dependency = "webhook_deliveries"


class WebhookDisabled(WebhookUnavailable):
    """The receiver answered 410 Gone: nothing more is sent until the forwarder is restarted."""

    reason = "webhook_disabled"


class WebhookRefused(NonRetriableError):
    """The receiver refused this payload (4xx): retrying would get the same answer."""

    reason = "webhook_refused"


class WebhookUnauthorized(WebhookRefused):
    """401/403: the receiver rejected the signature or the credentials."""

    reason = "webhook_unauthorized"


class WebhookFailing(NonRetriableError):
    """A delivery kept failing past its attempts while the receiver accepted other deliveries."""

    reason = "webhook_failing"


class UnexpectedEvent(DecodeError):
    """A readable record that is not an event the forwarder delivers (wrong topic, wrong type)."""

    reason = "unexpected_event_type"
