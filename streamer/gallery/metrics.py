"""The gallery job's metrics: events by outcome, images by result, ETag look-ups, state reads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from streamer.runtime.metrics import LATENCY_BUCKETS_S

__all__ = ["EVENT_OUTCOMES", "IMAGE_RESULTS", "INDEX_RESULTS", "RECHECK_RESULTS", "GalleryMetrics"]

# Bounded label values, listed so dashboards and tests can rely on them.
EVENT_OUTCOMES = ("written", "noop", "stale", "duplicate", "partial", "dead_lettered")
IMAGE_RESULTS = (
    "added",
    "content_changed",
    "metadata_changed",
    "unchanged",
    "removed",
    "dropped_limit",
    "invalid_file_path",
    "invalid_label",
    "object_missing",
    "object_too_large",
)

RECHECK_RESULTS = ("changed", "noop", "duplicate", "object_missing", "invalid")
INDEX_RESULTS = ("hit", "miss")


class GalleryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = r
        self.events_consumed = Counter(
            "streamer_events_consumed_total",
            "Messages consumed from source topics, by topic and event type",
            ["topic", "event_type"],
            registry=r,
        )
        self.events_processed = Counter(
            "streamer_events_processed_total",
            "Events processed, by outcome (written, noop, stale, duplicate, partial, ...)",
            ["outcome"],
            registry=r,
        )
        self.images = Counter(
            "streamer_images_total",
            "Images seen in events, by result (added, content_changed, ..., invalid reasons)",
            ["result"],
            registry=r,
        )
        self.unknown_roles = Counter(
            "streamer_unknown_roles_total",
            "Image roles ignored because they are not managed",
            registry=r,
        )
        self.etag_checks = Counter(
            "streamer_etag_checks_total",
            "ETag look-ups of S3 objects, by result",
            ["result"],
            registry=r,
        )
        self.s3_requests = Counter(
            "streamer_s3_requests_total",
            "Requests sent to S3, by operation (head, list)",
            ["operation"],
            registry=r,
        )
        self.head_latency = Histogram(
            "streamer_s3_head_duration_seconds",
            "Latency of one S3 HEAD request",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.etag_batch_latency = Histogram(
            "streamer_etag_lookup_duration_seconds",
            "Time to resolve the ETags of one batch",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.db_read_latency = Histogram(
            "streamer_db_read_duration_seconds",
            "Time to load the stored state of one batch's SKUs",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.db_rows_written = Counter(
            "streamer_db_rows_written_total",
            "Rows written: gallery images by operation (insert, update, delete), product rows (product)",
            ["operation"],
            registry=r,
        )
        self.outcome_events = Counter(
            "streamer_outcome_events_total",
            "GalleryUpdated events published to the outcome topic",
            registry=r,
        )
        self.rechecks = Counter(
            "streamer_gallery_rechecks_total",
            "Galleries re-checked because objects they use changed in the bucket, by result "
            "(changed: a new content_version and a GalleryUpdated; object_missing: deleted)",
            ["result"],
            registry=r,
        )
        self.index_lookups = Counter(
            "streamer_object_index_lookups_total",
            "ETag look-ups answered by the object index (hit) or passed on to S3 (miss)",
            ["result"],
            registry=r,
        )
        for outcome in EVENT_OUTCOMES:
            self.events_processed.labels(outcome)
        for result in RECHECK_RESULTS:
            self.rechecks.labels(result)
        for result in INDEX_RESULTS:
            self.index_lookups.labels(result)
