"""Publishing source events: each kind to its topic, keyed by SKU, in the contract's encoding."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged, ProductChanged
from streamer.contract.topics import TopicSettings

__all__ = ["EventPublisher", "Producing", "topic_for"]

Event = ProductChanged | MediaGalleryChanged


class Producing(Protocol):
    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None: ...


def topic_for(event: Event, topics: TopicSettings) -> str:
    return topics.product_topic if isinstance(event, ProductChanged) else topics.media_topic


class EventPublisher:
    """Encodes and produces events; delivery is the producer's to confirm (``flush``)."""

    def __init__(
        self,
        producer: Producing,
        codec: Codec,
        topics: TopicSettings,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.headers = headers or None  # on every event (the trace context of the run)

    def prepare(self, events: Iterable[Event]) -> None:
        """Register the writer schemas these events need before any is produced, so a schema
        the registry refuses fails the whole request instead of the events after the first
        of its kind."""
        for topic, type_name in dict.fromkeys(
            (topic_for(e, self.topics), e.type.value) for e in events
        ):
            self.codec.register(topic, type_name)

    def publish(self, event: Event) -> None:
        topic = topic_for(event, self.topics)
        self.producer.produce(
            topic,
            self.codec.encode(event, topic=topic),
            key=event.sku.encode("utf-8"),
            headers=self.headers,
        )
