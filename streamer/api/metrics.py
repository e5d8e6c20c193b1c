"""The API's metrics: requests by route template and status, latency, items taken in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamer.runtime.metrics import LATENCY_BUCKETS_S

__all__ = ["ITEM_STATUSES", "ApiMetrics"]

ITEM_STATUSES = ("accepted", "rejected", "superseded", "undeliverable")


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "streamer_api_requests_total",
            "HTTP requests, by route template, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "streamer_api_request_duration_seconds",
            "HTTP request latency, by route template and method",
            ["route", "method"],
            buckets=(*LATENCY_BUCKETS_S, 30.0, 60.0),
            registry=r,
        )
        self.items = Counter(
            "streamer_api_items_total",
            "Items of intake requests, by acknowledgment status",
            ["status"],
            registry=r,
        )
        for status in ITEM_STATUSES:
            self.items.labels(status)
        self.waiting = Gauge(
            "streamer_api_waiting_requests",
            "Intake requests waiting for their bulk to complete (Prefer: wait)",
            registry=r,
        )
