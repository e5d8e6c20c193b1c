"""Completion metrics: bulks completed, the delay to their event, the relay's leadership."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["COMPLETION_BUCKETS_S", "TrackingMetrics"]

COMPLETION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class TrackingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.completed = Counter(
            "streamer_imports_completed_total",
            "ImportCompleted events published (one per bulk)",
            registry=r,
        )
        self.completion_delay = Histogram(
            "streamer_import_completion_delay_seconds",
            "From a bulk's last item processed to its ImportCompleted acknowledged by the broker",
            buckets=COMPLETION_BUCKETS_S,
            registry=r,
        )
        self.leader = Gauge(
            "streamer_completion_relay_leader",
            "1 while this process is the relay that publishes ImportCompleted events",
            registry=r,
        )
        self.takeovers = Counter(
            "streamer_completion_relay_takeovers_total",
            "Times this process became the relay (each reads its topic back first)",
            registry=r,
        )
        self.recovered = Counter(
            "streamer_completion_relay_recovered_total",
            "ImportCompleted events found already published when reading the topic back",
            registry=r,
        )
