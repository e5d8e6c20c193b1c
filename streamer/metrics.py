"""Every Prometheus metric streamer exports, in one place.

Names follow Prometheus conventions (``streamer_`` prefix, base units in the
name, ``_total`` on counters). Label values are bounded enumerations or
topic/partition: never a SKU, a file path or an event id.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from streamer import __version__

__all__ = ["Metrics"]

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)

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
ETAG_RESULTS = ("found", "missing", "too_large", "etag_mismatch", "error")
DEPENDENCIES = ("s3", "postgres", "kafka")
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The metric objects, registered on a registry passed in so tests can use their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = r
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("streamer_build", "Build information", registry=r)
        self.build_info.info({"version": __version__})
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
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.etag_batch_latency = Histogram(
            "streamer_etag_lookup_duration_seconds",
            "Time to resolve the ETags of one batch",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.db_write_latency = Histogram(
            "streamer_db_write_duration_seconds",
            "Time of one batch write transaction in PostgreSQL",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.db_read_latency = Histogram(
            "streamer_db_read_duration_seconds",
            "Time to load the stored state of one batch's SKUs",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.db_rows_written = Counter(
            "streamer_db_rows_written_total",
            "Gallery rows written, by operation (insert, update, delete)",
            ["operation"],
            registry=r,
        )
        self.batch_size = Histogram(
            "streamer_batch_size_events",
            "Events in one processed batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "streamer_batch_duration_seconds",
            "Wall time to process and commit one batch",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.dead_letters = Counter(
            "streamer_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.outcome_events = Counter(
            "streamer_outcome_events_total",
            "GalleryUpdated events published to the outcome topic",
            registry=r,
        )
        self.retries = Counter(
            "streamer_retries_total",
            "Retries of a failed call, by dependency",
            ["dependency"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "streamer_circuit_state",
            "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open",
            ["dependency"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamer_consumer_lag_messages",
            "Messages behind the high-water mark, per assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "streamer_assigned_partitions", "Partitions assigned to this worker", registry=r
        )
        self.paused_partitions = Gauge(
            "streamer_paused_partitions", "Assigned partitions currently paused", registry=r
        )
        self.rebalances = Counter(
            "streamer_rebalances_total",
            "Rebalance callbacks, by kind (assign, revoke, lost)",
            ["kind"],
            registry=r,
        )
        self.fenced = Counter(
            "streamer_fenced_batches_total",
            "Batches refused because another worker owns the partition now",
            registry=r,
        )
        self.last_commit = Gauge(
            "streamer_last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
            registry=r,
        )
        for dep in DEPENDENCIES:
            self.circuit_state.labels(dep).set(0)
            self.retries.labels(dep)
        for outcome in EVENT_OUTCOMES:
            self.events_processed.labels(outcome)
