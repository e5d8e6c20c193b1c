"""The forwarder's metrics: requests by result, deliveries and events by outcome, attempts,
latency, requests in flight, the pace and whether delivery is disabled.

The webhook circuit is the runtime's ``streamer_circuit_state{dependency="webhook"}``;
dead letters are the runtime's ``streamer_dead_letters_total{reason="webhook_..."}``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamer.runtime.metrics import LATENCY_BUCKETS_S

__all__ = ["DELIVERY_OUTCOMES", "REQUEST_RESULTS", "ForwardMetrics"]

# Bounded label values, listed so dashboards and tests can rely on them.
REQUEST_RESULTS = ("2xx", "3xx", "4xx", "429", "5xx", "timeout", "network")
DELIVERY_OUTCOMES = ("delivered", "refused", "failing")
ATTEMPT_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 50, 100)
WEBHOOK_LATENCY_BUCKETS_S = (*LATENCY_BUCKETS_S, 30.0, 60.0)


class ForwardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "streamer_webhook_requests_total",
            "HTTP requests to the webhook receiver, by result (2xx, 3xx, 4xx, 429, 5xx, timeout, network)",
            ["result"],
            registry=r,
        )
        self.deliveries = Counter(
            "streamer_webhook_deliveries_total",
            "Deliveries finished, by outcome (delivered; refused or failing: dead-lettered)",
            ["outcome"],
            registry=r,
        )
        self.events = Counter(
            "streamer_webhook_events_total",
            "Events in finished deliveries, by outcome",
            ["outcome"],
            registry=r,
        )
        self.attempts = Histogram(
            "streamer_webhook_delivery_attempts",
            "Requests a delivery took until it finished",
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "streamer_webhook_request_duration_seconds",
            "Time of one request to the receiver, until its status and the body excerpt",
            buckets=WEBHOOK_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "streamer_webhook_in_flight_requests", "Requests to the receiver in flight", registry=r
        )
        self.rate_limited = Counter(
            "streamer_webhook_rate_limited_total",
            "Requests that waited for the rate limit or a receiver's Retry-After",
            registry=r,
        )
        self.rate = Gauge(
            "streamer_webhook_rate_limit_per_second",
            "The current request rate limit (0: none); 429s lower it, accepted requests restore it",
            registry=r,
        )
        self.disabled = Gauge(
            "streamer_webhook_disabled",
            "1 when delivery is disabled because the receiver answered 410 Gone",
            registry=r,
        )
        for result in REQUEST_RESULTS:
            self.requests.labels(result)
        for outcome in DELIVERY_OUTCOMES:
            self.deliveries.labels(outcome)
            self.events.labels(outcome)
