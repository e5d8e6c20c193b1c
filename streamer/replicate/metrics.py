"""The replicator's metrics: copies and bytes, images by result, failures, deletes, requests in flight."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamer.runtime.metrics import LATENCY_BUCKETS_S

__all__ = [
    "COPY_MODES",
    "EVENT_OUTCOMES",
    "FAILURE_REASONS",
    "IMAGE_RESULTS",
    "REQUESTS",
    "ReplicaMetrics",
]

# Bounded label values, created at zero so dashboards and alerts see them from the start.
COPY_MODES = ("server_side", "streamed")
EVENT_OUTCOMES = ("applied", "stale", "superseded", "off", "dead_lettered")
IMAGE_RESULTS = ("copied", "identical", "recorded", "dropped_limit", "failed")
FAILURE_REASONS = ("object_missing", "object_too_large")
REQUESTS = (
    ("source", "head"),
    ("source", "get"),
    ("source", "list"),
    ("replica", "head"),
    ("replica", "copy"),
    ("replica", "put"),
    ("replica", "delete"),
)


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.events = Counter(
            "streamer_replica_events_total",
            "GalleryUpdated events read by the replicator, by outcome",
            ["outcome"],
            registry=r,
        )
        self.images = Counter(
            "streamer_replica_images_total",
            "Images of replicated galleries by result: copied, identical (destination already "
            "held it, seen by HEAD), recorded (known replicated, no request), dropped_limit, failed",
            ["result"],
            registry=r,
        )
        self.copies = Counter(
            "streamer_replica_copies_total",
            "Objects copied to the destination, by mode (server_side, streamed)",
            ["mode"],
            registry=r,
        )
        self.copied_bytes = Counter(
            "streamer_replica_copied_bytes_total",
            "Bytes copied to the destination, by mode",
            ["mode"],
            registry=r,
        )
        self.failures = Counter(
            "streamer_replica_failures_total",
            "Images that could not be replicated (dead-lettered), by reason",
            ["reason"],
            registry=r,
        )
        self.deletes = Counter(
            "streamer_replica_deletes_total",
            "Objects deleted at the destination because no gallery uses them any more",
            registry=r,
        )
        self.pending_deletes = Gauge(
            "streamer_replica_pending_deletes",
            "Destination objects marked for deletion and not deleted yet",
            registry=r,
        )
        self.in_flight = Gauge(
            "streamer_replica_in_flight",
            "S3 requests of the replicator in flight (HEADs, copies, deletes)",
            registry=r,
        )
        self.requests = Counter(
            "streamer_replica_requests_total",
            "S3 requests of the replicator, by target store and operation",
            ["target", "operation"],
            registry=r,
        )
        self.copy_latency = Histogram(
            "streamer_replica_copy_duration_seconds",
            "Time to copy one object to the destination",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome)
        for result in IMAGE_RESULTS:
            self.images.labels(result)
        for mode in COPY_MODES:
            self.copies.labels(mode)
            self.copied_bytes.labels(mode)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        for target, operation in REQUESTS:
            self.requests.labels(target, operation)
