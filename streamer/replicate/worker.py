"""A replicator worker: the runtime's runner around the replicate handler, built from settings."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.contract.topics import TopicSettings
from streamer.replicate.handler import ReplicateHandler
from streamer.replicate.settings import ReplicaSettings
from streamer.runtime.job import Sections
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner
from streamer.runtime.settings import KafkaSettings
from streamer.storage.settings import S3Settings

__all__ = ["replicate_runner"]


def replicate_runner(
    sections: Sections,
    *,
    registry: CollectorRegistry | None = None,
    install_signal_handlers: bool = True,
    pruning: Pruning | None = None,
) -> Runner[Any, Any, Any]:
    """One member of the replicator's consumer group (``streamer replicate``)."""
    replica = sections.section(ReplicaSettings)
    replica.bucket()  # refuses to start without a destination bucket
    handler = ReplicateHandler(
        replica,
        sections.section(TopicSettings),
        sections.section(S3Settings),
        codec=Codec.for_registry(sections.section(KafkaSettings).schema_registry_url),
    )
    return Runner.of(
        handler,
        sections,
        group_id=replica.replica_group_id,
        registry=registry,
        install_signal_handlers=install_signal_handlers,
        pruning=pruning,
    )
