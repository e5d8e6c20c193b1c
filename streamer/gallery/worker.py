"""A gallery worker: the runtime's batch loop around the gallery handler, built from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.gallery.etags import EtagSource
from streamer.gallery.handler import GalleryHandler, GalleryPlan
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = ["GalleryWorker"]


class GalleryWorker(Runner[GalleryPlan]):
    """One member of the gallery consumer group (``streamer consume``)."""

    handler: GalleryHandler

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        etags: EtagSource | None = None,
        install_signal_handlers: bool = True,
        pruning: Pruning | None = None,
    ) -> None:
        handler = GalleryHandler(
            settings.gallery,
            settings.topics,
            settings.s3,
            codec=Codec.for_registry(settings.kafka.schema_registry_url),
            etags=etags,
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
