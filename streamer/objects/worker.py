"""An objects worker: the runtime's runner around the objects handler, on the Kafka topic of
bucket notifications or, when ``STREAMER_OBJECTS_SQS_URL`` is set, on S3's SQS queue."""

from __future__ import annotations

from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.contract.topics import TopicSettings
from streamer.objects.handler import ObjectsHandler
from streamer.objects.queue import check_queue, make_sqs_client
from streamer.objects.settings import ObjectsSettings
from streamer.runtime.job import Sections
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner
from streamer.runtime.settings import KafkaSettings
from streamer.runtime.source import Source
from streamer.runtime.sqs_source import SqsSource
from streamer.storage.settings import S3Settings

__all__ = ["make_handler", "objects_runner"]


def make_handler(sections: Sections) -> ObjectsHandler:
    return ObjectsHandler(
        sections.section(ObjectsSettings),
        sections.section(TopicSettings),
        sections.section(S3Settings),
        codec=Codec.for_registry(sections.section(KafkaSettings).schema_registry_url),
    )


def objects_runner(
    sections: Sections,
    *,
    registry: CollectorRegistry | None = None,
    install_signal_handlers: bool = True,
    pruning: Pruning | None = None,
    sqs_client: Any = None,
) -> Runner[Any, Any, Any]:
    """One worker of the object index (``streamer objects consume``): a member of its
    consumer group, or a receiver of the SQS queue."""
    o = sections.section(ObjectsSettings)
    source: Source | None = None
    if o.objects_sqs_url:
        client = sqs_client or make_sqs_client(o.objects_sqs_url, sections.section(S3Settings))
        source = SqsSource(
            client,
            o.objects_sqs_url,
            wait_s=o.objects_sqs_wait_s,
            visibility_s=o.objects_sqs_visibility_s,
            check=partial(check_queue, client, o.objects_sqs_url),
        )
    return Runner.of(
        make_handler(sections),
        sections,
        group_id=o.objects_group_id,
        source=source,
        registry=registry,
        install_signal_handlers=install_signal_handlers,
        pruning=pruning,
    )
