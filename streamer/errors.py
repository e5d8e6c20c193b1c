"""The vocabulary every error streamer raises on purpose is built from; each layer adds its own.

Every error carries its own retry decision (``retriable``, on the class), true to what
the runner does with it, and, when it is bound for the dead-letter topic, a stable
machine-readable ``reason``. Callers read those attributes instead of keeping lists of
exception types. A ``DependencyUnavailable`` names the ``dependency`` whose circuit
breaker counts it and may say how long to wait (``retry_after_s``, e.g. from a
``Retry-After`` header). Third-party errors are converted at the boundary with
``raise ... from exc``.

The errors themselves live with the layer that raises them: the runtime's in
``streamer.runtime.errors`` (the broker, the database, the commit's control flow), the
event contract's in ``streamer.contract.errors`` (undecodable or invalid events, the
Schema Registry), the object store's in ``streamer.storage.errors``, each job's in its
own package.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConfigError",
    "DependencyUnavailable",
    "NonRetriableError",
    "RetriableError",
    "StreamerError",
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
    """The runner tries the work again: never dead-lettered, never the end of a worker."""

    retriable = True
    reason = "retriable"


class NonRetriableError(StreamerError):
    """Trying again would fail again: the message is dead-lettered, or the command stops."""

    reason = "non_retriable"


class ConfigError(NonRetriableError):
    """A setting names something that does not work (a bucket that does not exist, refused
    credentials): the command stops with a message naming the setting, changing nothing."""

    reason = "config"


class DependencyUnavailable(RetriableError):
    """A dependency did not answer (or refused for now): retried with backoff, counted by the
    dependency's circuit breaker, and waited out with the partitions paused."""

    dependency: str = "unknown"
    reason = "dependency_unavailable"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s
