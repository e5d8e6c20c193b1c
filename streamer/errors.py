"""One exception hierarchy for the whole service.

Every error carries its own retry decision (``retriable``) and, when it is bound
for the dead-letter topic, a stable machine-readable ``reason``. Callers read
those two attributes instead of keeping lists of exception types. Third-party
errors are converted at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "DatabaseDataError",
    "DatabaseUnavailable",
    "DecodeError",
    "DeliveryError",
    "DependencyUnavailable",
    "DuplicateEventIdError",
    "FencedError",
    "ImageInvalid",
    "InvalidEvent",
    "NonRetriableError",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "RetriableError",
    "SchemaRegistryUnavailable",
    "StreamerError",
    "TopicMissing",
]


class StreamerError(Exception):
    """Root of every error streamer raises on purpose."""

    retriable: ClassVar[bool] = False
    reason: ClassVar[str] = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason  # type: ignore[misc]


class RetriableError(StreamerError):
    """A failure that may pass by itself: retry with backoff, never dead-letter."""

    retriable = True
    reason = "retriable"


class NonRetriableError(StreamerError):
    """A failure that will not pass by retrying: dead-letter or report."""

    reason = "non_retriable"


class ConfigError(NonRetriableError):
    reason = "config"


class DecodeError(NonRetriableError):
    """Bytes that cannot be read as an event (garbage, truncated, unknown schema)."""

    reason = "undecodable"


class InvalidEvent(NonRetriableError):
    """A decoded event that breaks the contract (empty SKU, too many images, ...)."""

    reason = "invalid_event"


class DuplicateEventIdError(NonRetriableError):
    """An event_id seen before with a different payload: the idempotency key was reused."""

    reason = "duplicate_event_id"


class ImageInvalid(NonRetriableError):
    """One image of an event cannot be applied (bad path, missing or oversized object)."""

    reason = "image_invalid"


class DatabaseDataError(NonRetriableError):
    """A data error isolated to one SKU (constraint violation, value too long)."""

    reason = "database_data_error"


class TopicMissing(NonRetriableError):
    reason = "topic_missing"


class DeliveryError(StreamerError):
    """The broker did not acknowledge a produced message."""

    reason = "delivery_failed"

    def __init__(self, message: str, *, retriable: bool = False, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retriable = retriable  # type: ignore[misc]


class FencedError(NonRetriableError):
    """This worker lost ownership of partitions; its writes must not land."""

    reason = "fenced"

    def __init__(self, partitions: list[tuple[str, int]]) -> None:
        names = ", ".join(f"{t}[{p}]" for t, p in partitions)
        super().__init__(f"partitions now owned by another worker: {names}")
        self.partitions = partitions


class DependencyUnavailable(RetriableError):
    """A dependency (S3, PostgreSQL, the broker) did not answer; the breaker counts these."""

    dependency: ClassVar[str] = "unknown"
    reason = "dependency_unavailable"


class ObjectStoreUnavailable(DependencyUnavailable):
    dependency = "s3"


class DatabaseUnavailable(DependencyUnavailable):
    dependency = "postgres"


class BrokerUnavailable(DependencyUnavailable):
    dependency = "kafka"


class SchemaRegistryUnavailable(DependencyUnavailable):
    dependency = "schema_registry"


class ObjectStoreError(NonRetriableError):
    """S3 refused the request for a reason retrying will not fix (access denied, no bucket)."""

    reason = "object_store_error"
