"""The objects job's settings: its consumer group and where bucket notifications come from."""

from __future__ import annotations

from pydantic import Field, field_validator

from streamer.config import Section

__all__ = ["ObjectsSettings"]


class ObjectsSettings(Section):
    objects_group_id: str = "streamer-objects"
    objects_topic: str = Field(
        "catalog.objects.v1", description="Bucket notifications (MinIO's Kafka target, S3 records)"
    )
    objects_sqs_url: str | None = Field(
        None, description="Set: read S3's notifications from this SQS queue instead of the topic"
    )
    objects_sqs_wait_s: int = Field(10, ge=0, le=20, description="SQS long-poll wait")
    objects_sqs_visibility_s: int = Field(
        60, ge=1, description="How long a received SQS message stays hidden until deleted"
    )

    @field_validator("objects_group_id", "objects_topic")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()
