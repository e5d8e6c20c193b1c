"""A gallery worker: the runtime's runner around the gallery handler, built from settings."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.contract.topics import TopicSettings
from streamer.gallery.etags import EtagSource
from streamer.gallery.handler import GalleryHandler
from streamer.gallery.settings import GallerySettings
from streamer.runtime.job import Sections
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner
from streamer.runtime.settings import KafkaSettings
from streamer.storage.settings import S3Settings

__all__ = ["gallery_runner"]


def gallery_runner(
    sections: Sections,
    *,
    registry: CollectorRegistry | None = None,
    etags: EtagSource | None = None,
    install_signal_handlers: bool = True,
    pruning: Pruning | None = None,
) -> Runner[Any, Any, Any]:
    """One member of the gallery consumer group (``streamer consume``)."""
    gallery = sections.section(GallerySettings)
    handler = GalleryHandler(
        gallery,
        sections.section(TopicSettings),
        sections.section(S3Settings),
        codec=Codec.for_registry(sections.section(KafkaSettings).schema_registry_url),
        etags=etags,
    )
    return Runner.of(
        handler,
        sections,
        group_id=gallery.group_id,
        registry=registry,
        install_signal_handlers=install_signal_handlers,
        pruning=pruning,
    )
