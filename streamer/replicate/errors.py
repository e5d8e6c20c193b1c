"""The replicator's errors, in streamer's hierarchy: the destination has a circuit of its own."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from streamer.errors import DependencyUnavailable, NonRetriableError
from streamer.storage.errors import DENIED_CODES, error_code

__all__ = ["ReplicaUnavailable", "SourceChanged", "replica_error"]


class ReplicaUnavailable(DependencyUnavailable):
    """The destination store did not answer or refused: the ``replica`` circuit counts these."""

    dependency = "replica"


class SourceChanged(NonRetriableError):
    """The source object changed (or vanished) between its HEAD and the copy: check it again."""

    reason = "source_changed"


def replica_error(exc: ClientError | BotoCoreError | Exception, what: str) -> ReplicaUnavailable:
    if isinstance(exc, ClientError):
        code = error_code(exc) or "?"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        if code in DENIED_CODES or status == 403:
            return ReplicaUnavailable(
                f"the replica store denied access to {what}: {code} (HTTP {status}); check "
                "STREAMER_REPLICA_ACCESS_KEY_ID (or the source's credentials when "
                "STREAMER_REPLICA_ENDPOINT_URL is unset) and the bucket policy",
                reason="access_denied",
            )
        return ReplicaUnavailable(f"replica {what} failed: {code} (HTTP {status})")
    return ReplicaUnavailable(f"replica {what} failed: {type(exc).__name__}: {exc}")
