"""The errors streamer raises on purpose, shared by the runtime and every job.

Every error carries its own retry decision (``retriable``, on the class) and, when
it is bound for the dead-letter topic, a stable machine-readable ``reason``.
Callers read those attributes instead of keeping lists of exception types.
Retriable errors name the ``dependency`` whose circuit breaker counts them and
may say how long to wait (``retry_after_s``, e.g. from a ``Retry-After`` header).
Third-party errors are converted at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BrokerAccessDenied",
    "BrokerUnavailable",
    "ConfigError",
    "DatabaseDataError",
    "DatabaseUnavailable",
    "DecodeError",
    "DeliveryError",
    "DeliveryRefused",
    "DeliveryUnavailable",
    "DependencyUnavailable",
    "FencedError",
    "ImageInvalid",
    "InvalidEvent",
    "NonRetriableError",
    "ObjectStoreMisconfigured",
    "ObjectStoreUnavailable",
    "RetriableError",
    "SchemaRegistryUnavailable",
    "SchemaRejected",
    "StateChanged",
    "StreamerError",
    "TopicMissing",
]


class StreamerError(Exception):
    """Root of every error streamer raises on purpose."""

    retriable: ClassVar[bool] = False
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class RetriableError(StreamerError):
    """A failure that may pass by itself: retry with backoff, never dead-letter."""

    retriable = True
    reason = "retriable"


class NonRetriableError(StreamerError):
    """A failure that will not pass by retrying: dead-letter or report."""

    reason = "non_retriable"


class ConfigError(NonRetriableError):
    reason = "config"


class BrokerAccessDenied(ConfigError):
    """Kafka refused this client: wrong SASL credentials or an untrusted TLS certificate."""

    reason = "broker_access_denied"


class ObjectStoreMisconfigured(ConfigError):
    """Found at start: the bucket does not exist, or the store refuses these credentials."""

    reason = "object_store_misconfigured"


class SchemaRejected(ConfigError):
    """The Schema Registry refused a writer schema for good: incompatible with the subject's
    versions under its compatibility level, or invalid. Retrying sends the same schema."""

    reason = "schema_rejected"


class DecodeError(NonRetriableError):
    """Bytes that cannot be read as an event (garbage, truncated, unknown schema)."""

    reason = "undecodable"


class InvalidEvent(NonRetriableError):
    """A decoded event that breaks the contract (empty SKU, too many images, ...)."""

    reason = "invalid_event"


class ImageInvalid(NonRetriableError):
    """One image of an event cannot be applied (bad path); its event's other images still can."""

    reason = "image_invalid"


class DatabaseDataError(NonRetriableError):
    """A data error isolated to one key (constraint violation, value too long)."""

    reason = "database_data_error"


class TopicMissing(NonRetriableError):
    reason = "topic_missing"


class FencedError(NonRetriableError):
    """This worker lost ownership of partitions; its writes must not land."""

    reason = "fenced"

    def __init__(self, partitions: list[tuple[str, int]]) -> None:
        names = ", ".join(f"{t}[{p}]" for t, p in partitions)
        super().__init__(f"partitions now owned by another worker: {names}")
        self.partitions = partitions


class StateChanged(NonRetriableError):
    """What a batch was planned on changed before it could commit (another writer got there
    first, e.g. a worker holding the SKU's partition of the other topic): plan it again."""

    reason = "state_changed"

    def __init__(self, keys: list[str]) -> None:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        super().__init__(f"changed since this batch read them: {shown}")
        self.keys = keys


class DependencyUnavailable(RetriableError):
    """A dependency did not answer (or refused for now); its circuit breaker counts these."""

    dependency: str = "unknown"
    reason = "dependency_unavailable"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class ObjectStoreUnavailable(DependencyUnavailable):
    dependency = "s3"


class DatabaseUnavailable(DependencyUnavailable):
    dependency = "postgres"


class BrokerUnavailable(DependencyUnavailable):
    dependency = "kafka"


class DeliveryError(StreamerError):
    """The broker did not acknowledge produced messages; catch this for either kind below."""

    reason = "delivery_failed"


class DeliveryRefused(DeliveryError, NonRetriableError):
    """Refused for good (too large, unknown topic, bad configuration)."""

    reason = "delivery_refused"


class DeliveryUnavailable(DeliveryError, BrokerUnavailable):
    """Not acknowledged in time; the messages may go through later."""

    reason = "delivery_unavailable"


class SchemaRegistryUnavailable(DependencyUnavailable):
    dependency = "schema_registry"
