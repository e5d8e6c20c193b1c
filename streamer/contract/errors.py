"""The event contract's errors: bytes that are no event, events that break the contract,
and the Schema Registry."""

from __future__ import annotations

from streamer.errors import ConfigError, DependencyUnavailable, NonRetriableError

__all__ = [
    "DecodeError",
    "ImageInvalid",
    "InvalidEvent",
    "SchemaRegistryUnavailable",
    "SchemaRejected",
]


class DecodeError(NonRetriableError):
    """Bytes that cannot be read as an event (garbage, truncated, unknown schema)."""

    reason = "undecodable"


class InvalidEvent(NonRetriableError):
    """A decoded event that breaks the contract (empty SKU, too many images, ...)."""

    reason = "invalid_event"


class ImageInvalid(NonRetriableError):
    """One image of an event cannot be applied (bad path); its event's other images still can."""

    reason = "image_invalid"


class SchemaRegistryUnavailable(DependencyUnavailable):
    dependency = "schema_registry"


class SchemaRejected(ConfigError):
    """The Schema Registry refused a writer schema for good: incompatible with the subject's
    versions under its compatibility level, or invalid. Retrying sends the same schema."""

    reason = "schema_rejected"
