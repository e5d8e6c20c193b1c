"""An objects worker: the runtime's batch loop around the objects handler, built from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.objects.handler import ObjectsHandler, ObjectsPlan
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = ["ObjectsWorker", "make_handler"]


def make_handler(settings: Settings) -> ObjectsHandler:
    return ObjectsHandler(
        settings.objects,
        settings.topics,
        settings.s3,
        codec=Codec.for_registry(settings.kafka.schema_registry_url),
    )


class ObjectsWorker(Runner[ObjectsPlan]):
    """One member of the objects consumer group (``streamer objects consume``, Kafka source)."""

    handler: ObjectsHandler

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        install_signal_handlers: bool = True,
        pruning: Pruning | None = None,
    ) -> None:
        super().__init__(
            make_handler(settings),
            kafka=settings.kafka,
            database=settings.database,
            runtime=settings.runtime,
            registry=registry,
            install_signal_handlers=install_signal_handlers,
            pruning=pruning,
        )
