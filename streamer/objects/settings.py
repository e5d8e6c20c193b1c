"""The objects job's settings: its consumer group and where bucket notifications come from."""

from __future__ import annotations

from pydantic import Field

from streamer.config import NonBlank, Section

__all__ = ["ObjectsSettings"]


class ObjectsSettings(Section):
    objects_group_id: NonBlank = "streamer-objects"
    objects_topic: NonBlank = Field(
        "catalog.objects.v1", description="Bucket notifications (MinIO's Kafka target, S3 records)"
    )
    objects_sqs_url: str | None = Field(
        None, description="Set: read S3's notifications from this SQS queue instead of the topic"
    )
    objects_sqs_wait_s: int = Field(10, ge=0, le=20, description="SQS long-poll wait")
    objects_sqs_visibility_s: int = Field(
        60, ge=1, description="How long a received SQS message stays hidden until deleted"
    )
