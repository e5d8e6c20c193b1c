"""The replicator's errors, in streamer's hierarchy: the destination has a circuit of its own."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from streamer.errors import DependencyUnavailable, NonRetriableError
from streamer.storage.errors import StoreNames, object_store_error

__all__ = ["ReplicaUnavailable", "SourceChanged", "replica_error"]


class ReplicaUnavailable(DependencyUnavailable):
    """The destination store did not answer or refused: the ``replica`` circuit counts these."""

    dependency = "replica"


class SourceChanged(NonRetriableError):
    """The source object changed (or vanished) between its HEAD and the copy: check it again."""

    reason = "source_changed"


def replica_error(
    exc: ClientError | BotoCoreError | Exception,
    what: str,
    *,
    bucket: str | None = None,
    names: StoreNames | None = None,
) -> DependencyUnavailable:
    """A failed request to the destination, naming the replica's settings when it says the
    configuration is wrong (a missing bucket, refused credentials)."""
    return object_store_error(
        exc,
        what,
        bucket=bucket,
        names=names or StoreNames(store="the replica store", bucket="STREAMER_REPLICA_BUCKET"),
        error=ReplicaUnavailable,
    )
