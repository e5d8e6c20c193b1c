"""The objects job's metrics: notification records by result, their lag, re-checks asked for."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RECORD_RESULTS", "ObjectsMetrics"]

# Bounded label values, created at zero so dashboards and alerts see them from the start.
RECORD_RESULTS = ("indexed", "not_newer", "other_bucket", "test_event", "other_event")
LAG_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class ObjectsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.records = Counter(
            "streamer_object_notifications_total",
            "Bucket notification records, by result: indexed (newer than the index), not_newer "
            "(a duplicate or a late one), other_bucket, test_event, other_event (no new bytes)",
            ["result"],
            registry=r,
        )
        self.lag = Histogram(
            "streamer_object_notification_lag_seconds",
            "From an object's change (the record's event time) to its index row's commit",
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        self.last_lag = Gauge(
            "streamer_object_notification_last_lag_seconds",
            "The largest notification lag of the last batch that indexed records",
            registry=r,
        )
        self.rechecks = Counter(
            "streamer_object_rechecks_published_total",
            "GalleryRecheck events published: galleries using an object that changed or went",
            registry=r,
        )
        for result in RECORD_RESULTS:
            self.records.labels(result)
