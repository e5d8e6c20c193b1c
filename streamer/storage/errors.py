"""S3 failures in streamer's terms: a misconfiguration named as one, never mistaken for data.

A failed request says one of three things. The bucket does not exist (``NoSuchBucket``);
the store refused these credentials or this identity (a wrong key id or secret, a policy
that denies); or the store did not answer as it should (down, throttled, timing out).
The first two are misconfigurations: found at start they are a ``ConfigError`` naming the
setting to fix (``storage.checks``); found while running (a bucket deleted, a policy
changed) they are outages like the third: retriable, so the dependency's circuit opens and
the partitions pause until someone repairs them, and nothing is dead-lettered.

None of them is ever a missing object. A HEAD answers 404 both for a key that does not
exist and for a bucket that does not, so callers believe an absence only once the bucket
is known to exist (``confirm_bucket``: one listing under the missing key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from streamer.errors import ConfigError, DependencyUnavailable

__all__ = [
    "DENIED_CODES",
    "MISSING_CODES",
    "SOURCE",
    "ObjectStoreMisconfigured",
    "ObjectStoreUnavailable",
    "Refusal",
    "StoreNames",
    "error_code",
    "object_store_error",
    "refusal",
]


class ObjectStoreUnavailable(DependencyUnavailable):
    dependency = "s3"


class ObjectStoreMisconfigured(ConfigError):
    """Found at start: the bucket does not exist, or the store refuses these credentials."""

    reason = "object_store_misconfigured"


MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
BUCKET_MISSING_CODES = frozenset({"NoSuchBucket"})
DENIED_CODES = frozenset(
    {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)
# obstore keeps the server's answer in its message: the status line, and for requests
# with a body (listings) the S3 error document.
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


@dataclass(frozen=True)
class StoreNames:
    """What one configured store's settings are called, so messages name what to fix."""

    store: str = "S3"
    bucket: str = "STREAMER_S3_BUCKET"
    endpoint: str = "STREAMER_S3_ENDPOINT_URL"
    access_key_id: str = "STREAMER_S3_ACCESS_KEY_ID"
    secret_access_key: str = "STREAMER_S3_SECRET_ACCESS_KEY"  # noqa: S105 - its name


SOURCE = StoreNames()


@dataclass(frozen=True)
class Refusal:
    """A failed request that says the configuration is wrong, not that the store is down."""

    kind: Literal["bucket_missing", "access_denied"]
    code: str
    status: str

    def explain(self, names: StoreNames, bucket: str | None) -> str:
        """What is wrong, and the settings to look at."""
        shown = f"bucket {bucket!r}" if bucket else "the bucket"
        seen = f"{self.code}, HTTP {self.status}" if self.status != "?" else self.code
        if self.kind == "bucket_missing":
            return (
                f"{names.store} {shown} does not exist ({seen}): check {names.bucket} "
                f"(and {names.endpoint}, which says where it is)"
            )
        if self.code == "NoCredentials":
            return (
                f"no credentials for {names.store}: set {names.access_key_id} and "
                f"{names.secret_access_key}, or configure the AWS credential chain"
            )
        if self.code == "SignatureDoesNotMatch":
            return (
                f"{names.store} refused the secret key ({seen}): check "
                f"{names.secret_access_key}, the secret of {names.access_key_id}"
            )
        if self.code == "InvalidAccessKeyId":
            return (
                f"{names.store} does not know the access key ({seen}): check "
                f"{names.access_key_id} and {names.secret_access_key}"
            )
        return (
            f"{names.store} denied access to {shown} ({seen}): check the credentials "
            f"({names.access_key_id} and {names.secret_access_key}, or the AWS credential "
            "chain when they are unset) and the bucket policy"
        )


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> str:
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))


def refusal(exc: BaseException) -> Refusal | None:
    """The misconfiguration a failed boto3 or obstore request reports, if it reports one."""
    if isinstance(exc, ClientError):
        code, status = error_code(exc) or "?", _status(exc)
    elif isinstance(exc, NoCredentialsError | PermissionError):
        return Refusal("access_denied", "NoCredentials", "?")  # none found: nothing was sent
    elif isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        code, status = _obstore_answer(exc)
        code = "AccessDenied" if code == "?" else code
        status = "403" if status == "?" else status
    else:
        code, status = _obstore_answer(exc)
    if code in BUCKET_MISSING_CODES:
        return Refusal("bucket_missing", code, status)
    if code in DENIED_CODES or status == "403":
        return Refusal("access_denied", code if code != "?" else "403", status)
    return None


def _obstore_answer(exc: BaseException) -> tuple[str, str]:
    text = str(exc)
    status, code = _STATUS.search(text), _CODE.search(text)
    return (code.group(1) if code else "?", status.group(1) if status else "?")


def object_store_error(
    exc: ClientError | BotoCoreError | Exception,
    what: str,
    *,
    bucket: str | None = None,
    names: StoreNames = SOURCE,
    error: type[DependencyUnavailable] = ObjectStoreUnavailable,
) -> DependencyUnavailable:
    """A failed S3 call (boto3 or obstore) as a retriable error for the circuit breaker.

    An outage, a missing bucket and a denial all pause the consumer (a repaired bucket,
    credential or policy resumes it by itself), but a misconfiguration says so and names
    what to check, in the circuit's reason, the readiness probe and the log.
    """
    found = refusal(exc)
    if found is not None:
        return error(f"{what}: {found.explain(names, bucket)}", reason=found.kind)
    if isinstance(exc, ClientError):
        return error(f"{names.store} {what} failed: {error_code(exc) or '?'} (HTTP {_status(exc)})")
    return error(f"{names.store} {what} failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    """obstore's messages end with a multi-line debug dump of the Rust error: keep the summary."""
    return str(exc).split("\n", 1)[0].strip()
