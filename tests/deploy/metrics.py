"""Every metric any streamer process can export, for checks of dashboards and alert rules."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamer.api.metrics import ApiMetrics
from streamer.forward.metrics import ForwardMetrics
from streamer.gallery.metrics import GalleryMetrics
from streamer.objects.metrics import ObjectsMetrics
from streamer.replicate.metrics import ReplicaMetrics
from streamer.runtime.metrics import RuntimeMetrics, new_registry
from streamer.runtime.retention import RetentionMetrics
from streamer.tracking.metrics import TrackingMetrics

__all__ = ["registry_with_every_metric"]


def registry_with_every_metric() -> CollectorRegistry:
    registry = new_registry()
    RuntimeMetrics(registry)
    GalleryMetrics(registry)
    ForwardMetrics(registry)
    ApiMetrics(registry)
    TrackingMetrics(registry)
    ReplicaMetrics(registry)
    ObjectsMetrics(registry)
    RetentionMetrics(registry)
    return registry
