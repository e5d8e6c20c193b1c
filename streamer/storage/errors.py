"""S3 failures in streamer's terms: every one retriable, and "denied" never mistaken for "down"."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from streamer.errors import ObjectStoreUnavailable

__all__ = ["DENIED_CODES", "MISSING_CODES", "error_code", "object_store_error"]

MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
DENIED_CODES = frozenset(
    {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _denied(what: str, detail: str) -> ObjectStoreUnavailable:
    return ObjectStoreUnavailable(
        f"S3 denied access to {what}: {detail}; check the credentials "
        "(STREAMER_S3_ACCESS_KEY_ID or the AWS chain) and the bucket policy",
        reason="access_denied",
    )


def object_store_error(
    exc: ClientError | BotoCoreError | Exception, what: str
) -> ObjectStoreUnavailable:
    """A failed S3 call (boto3 or obstore) as a retriable error for the circuit breaker.

    Both an outage and a denial pause the consumer (a fixed credential or policy
    resumes it by itself), but a denial says so and names what to check, in the
    circuit's reason, the readiness probe and the log.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc) or "?"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        if code in DENIED_CODES or status == 403:
            return _denied(what, f"{code} (HTTP {status})")
        return ObjectStoreUnavailable(f"S3 {what} failed: {code} (HTTP {status})")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError | PermissionError):
        return _denied(what, _first_line(exc))
    return ObjectStoreUnavailable(f"S3 {what} failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    """obstore's messages end with a multi-line debug dump of the Rust error: keep the summary."""
    return str(exc).split("\n", 1)[0].strip()
