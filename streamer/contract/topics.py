"""The topics of the event contract: where each kind of event travels."""

from __future__ import annotations

from streamer.config import Section

__all__ = ["TopicSettings"]


class TopicSettings(Section):
    product_topic: str = "catalog.product.v1"
    media_topic: str = "catalog.media.v1"
    outcome_topic: str = "catalog.gallery.updated.v1"
    import_completed_topic: str = "catalog.import.completed.v1"
