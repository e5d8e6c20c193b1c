"""The runtime's Prometheus metrics: what every consumer job exports, whatever it does.

Names follow Prometheus conventions (``streamer_`` prefix, base units in the
name, ``_total`` on counters). Label values are bounded enumerations or
topic/partition: never a SKU, a file path or an event id. Each job registers its
own metrics on the same registry (``registry`` is passed in, so tests use their own).
"""

from __future__ import annotations

from collections.abc import Iterable

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

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS_S", "RuntimeMetrics", "new_registry"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


def new_registry() -> CollectorRegistry:
    """A registry with the process and platform collectors, as one worker process exports them."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Info("streamer_build", "Build information", registry=registry).info({"version": __version__})
    return registry


class RuntimeMetrics:
    def __init__(
        self, registry: CollectorRegistry, dependencies: Iterable[str] = ("postgres", "kafka")
    ) -> None:
        """``dependencies``: their retry and circuit series exist from the start, at zero."""
        r = registry
        self.registry = r
        self.messages_consumed = Counter(
            "streamer_messages_consumed_total",
            "Messages handed to the job, by topic",
            ["topic"],
            registry=r,
        )
        self.db_write_latency = Histogram(
            "streamer_db_write_duration_seconds",
            "Time of one batch's checkpoint transaction in PostgreSQL (writes, publishing, commit)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "streamer_batch_size_events",
            "Events in one processed batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "streamer_batch_duration_seconds",
            "Wall time to process and commit one batch",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.dead_letters = Counter(
            "streamer_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason",
            ["reason"],
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
        self.replanned = Counter(
            "streamer_replanned_batches_total",
            "Batches planned again because what they read changed before they committed",
            registry=r,
        )
        self.last_commit = Gauge(
            "streamer_last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
            registry=r,
        )
        for dep in dependencies:
            self.retries.labels(dep)
            self.circuit_state.labels(dep).set(0)
