"""A replicator worker: the runtime's batch loop around the replicate handler, built from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.replicate.handler import ReplicaPlan, ReplicateHandler
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = ["ReplicaWorker"]


class ReplicaWorker(Runner[ReplicaPlan]):
    """One member of the replicator's consumer group (``streamer replicate``)."""

    handler: ReplicateHandler

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        install_signal_handlers: bool = True,
        pruning: Pruning | None = None,
    ) -> None:
        handler = ReplicateHandler(
            settings.replica,
            settings.topics,
            settings.s3,
            codec=Codec.for_registry(settings.kafka.schema_registry_url),
        )
        super().__init__(
            handler,
            kafka=settings.kafka,
            database=settings.database,
            runtime=settings.runtime,
            registry=registry,
            install_signal_handlers=install_signal_handlers,
            pruning=pruning,
        )
