"""The runtime's errors: the broker, the database, and a batch's commit.

``FencedError`` and ``StateChanged`` are control flow, not failures: the runner takes the
batch again at once (without the partitions this worker lost, or planned on fresh
state), with no backoff and no circuit breaker. That is what ``BatchRetry`` says.
"""

from __future__ import annotations

from streamer.errors import (
    ConfigError,
    DependencyUnavailable,
    NonRetriableError,
    RetriableError,
    StreamerError,
)

__all__ = [
    "BatchRetry",
    "BrokerAccessDenied",
    "BrokerUnavailable",
    "DatabaseDataError",
    "DatabaseUnavailable",
    "DeliveryError",
    "DeliveryRefused",
    "DeliveryUnavailable",
    "FencedError",
    "StateChanged",
    "TopicMissing",
]


class BrokerAccessDenied(ConfigError):
    """Kafka refused this client: wrong SASL credentials, an untrusted TLS certificate, or an
    authorizer that denies it a topic or its group."""

    reason = "broker_access_denied"


class TopicMissing(NonRetriableError):
    reason = "topic_missing"


class BrokerUnavailable(DependencyUnavailable):
    dependency = "kafka"


class DatabaseUnavailable(DependencyUnavailable):
    dependency = "postgres"


class DatabaseDataError(NonRetriableError):
    """A data error isolated to one key (constraint violation, value too long)."""

    reason = "database_data_error"


class DeliveryError(StreamerError):
    """The broker did not acknowledge produced messages; catch this for either kind below."""

    reason = "delivery_failed"


class DeliveryRefused(DeliveryError, NonRetriableError):
    """Refused for good (too large, unknown topic, bad configuration)."""

    reason = "delivery_refused"


class DeliveryUnavailable(DeliveryError, BrokerUnavailable):
    """Not acknowledged in time; the messages may go through later."""

    reason = "delivery_unavailable"


class BatchRetry(RetriableError):
    """The batch is taken again at once (see the module docstring)."""

    reason = "batch_retry"


class FencedError(BatchRetry):
    """This worker lost ownership of partitions; its writes must not land. The runner drops
    them and commits the rest of the batch."""

    reason = "fenced"

    def __init__(self, partitions: list[tuple[str, int]]) -> None:
        names = ", ".join(f"{t}[{p}]" for t, p in partitions)
        super().__init__(f"partitions now owned by another worker: {names}")
        self.partitions = partitions


class StateChanged(BatchRetry):
    """What a batch was planned on changed before it could commit (another writer got there
    first, e.g. a worker holding the key's partition of another topic): the runner decodes
    and plans it again."""

    reason = "state_changed"

    def __init__(self, keys: list[str]) -> None:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        super().__init__(f"changed since this batch read them: {shown}")
        self.keys = keys
