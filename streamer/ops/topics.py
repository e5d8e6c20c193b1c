"""Creating the topics streamer uses; existing ones are reported, not an error."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streamer.errors import StreamerError
from streamer.jobs import JOBS
from streamer.runtime.connection import check_broker
from streamer.settings import Settings

__all__ = ["create_topics", "topic_names"]


def topic_names(settings: Settings) -> list[str]:
    """Every job's topics (``streamer.jobs``), the intake's completions and the dead letters."""
    named = [t for job in JOBS for t in job.topics(settings)]
    named += [settings.topics.import_completed_topic, settings.runtime.dlq_topic]
    return list(dict.fromkeys(named))


def create_topics(
    settings: Settings,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
    timeout_s: float = 15.0,
) -> dict[str, str]:
    """topic -> "created" or "exists"."""
    kafka = settings.kafka
    check_broker(kafka, timeout_s=timeout_s)
    admin = AdminClient(kafka.client_config())
    new = [
        NewTopic(
            name,
            num_partitions=partitions or kafka.topic_partitions,
            # -1: the broker's default.replication.factor (KIP-464)
            replication_factor=replication_factor or kafka.topic_replication_factor or -1,
        )
        for name in topic_names(settings)
    ]
    status: dict[str, str] = {}
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            status[name] = "created"
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                status[name] = "exists"
            else:
                raise StreamerError(f"could not create topic {name!r}: {exc}") from exc
    return status
