"""S3 failures: a missing bucket or an access denial pauses like an outage but says what to
check, naming the settings of the store that refused."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

from streamer.replicate.errors import replica_error
from streamer.replicate.settings import ReplicaSettings
from streamer.runtime.circuit import CircuitBreaker
from streamer.storage.errors import object_store_error, refusal

pytestmark = pytest.mark.unit


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "HeadObject",
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDenied", 403),
        ("InvalidAccessKeyId", 403),
        ("SignatureDoesNotMatch", 403),
        ("403", 403),
    ],
)
def test_a_denial_names_the_credentials(code: str, status: int) -> None:
    error = object_store_error(client_error(code, status), "HEAD media/a.jpg", bucket="cat")
    assert error.retriable and error.dependency == "s3"
    assert error.reason == "access_denied"
    assert error.message.startswith("HEAD media/a.jpg: S3 ")
    assert "STREAMER_S3_SECRET_ACCESS_KEY" in error.message


def test_each_refusal_says_what_to_fix() -> None:
    def message(code: str, status: int = 403) -> str:
        return object_store_error(client_error(code, status), "HEAD a.jpg", bucket="cat").message

    assert message("AccessDenied") == (
        "HEAD a.jpg: S3 denied access to bucket 'cat' (AccessDenied, HTTP 403): check the "
        "credentials (STREAMER_S3_ACCESS_KEY_ID and STREAMER_S3_SECRET_ACCESS_KEY, or the AWS "
        "credential chain when they are unset) and the bucket policy"
    )
    assert message("SignatureDoesNotMatch") == (
        "HEAD a.jpg: S3 refused the secret key (SignatureDoesNotMatch, HTTP 403): check "
        "STREAMER_S3_SECRET_ACCESS_KEY, the secret of STREAMER_S3_ACCESS_KEY_ID"
    )
    assert "does not know the access key" in message("InvalidAccessKeyId")
    assert message("NoSuchBucket", 404) == (
        "HEAD a.jpg: S3 bucket 'cat' does not exist (NoSuchBucket, HTTP 404): check "
        "STREAMER_S3_BUCKET (and STREAMER_S3_ENDPOINT_URL, which says where it is)"
    )


def test_a_missing_bucket_is_an_outage_never_a_missing_object() -> None:
    error = object_store_error(client_error("NoSuchBucket", 404), "LIST a/", bucket="cat")
    assert error.retriable and error.reason == "bucket_missing"
    assert refusal(client_error("404", 404)) is None  # a HEAD's 404: the caller confirms


def test_obstore_answers_are_read_from_the_server_reply() -> None:
    body = (
        "Generic S3 error: Error performing list request: Error performing GET "
        "http://s3/cat?list-type=2 in 5ms - Server returned non-2xx status code: 404 Not Found: "
        '<?xml version="1.0"?>\n<Error><Code>NoSuchBucket</Code><Message>x</Message></Error>'
        "\n\nDebug source: ..."
    )
    missing = object_store_error(GenericError(body), "LIST a/", bucket="cat")
    assert missing.reason == "bucket_missing" and "STREAMER_S3_BUCKET" in missing.message
    denied = GenericError(
        body.replace("404 Not Found", "403 Forbidden").replace(
            "NoSuchBucket", "SignatureDoesNotMatch"
        )
    )
    assert object_store_error(denied, "LIST a/").reason == "access_denied"
    assert "STREAMER_S3_SECRET_ACCESS_KEY" in object_store_error(denied, "LIST a/").message
    server = GenericError(
        body.replace("404 Not Found", "500 Internal").replace("NoSuchBucket", "InternalError")
    )
    assert object_store_error(server, "LIST a/").reason == "dependency_unavailable"


def test_the_replica_store_names_its_own_settings() -> None:
    other = ReplicaSettings(
        replica_bucket="copy",
        replica_endpoint_url="http://r2/",
        replica_access_key_id="k",
        replica_secret_access_key="s",
    )
    error = replica_error(
        client_error("SignatureDoesNotMatch", 403), "PUT a.jpg", bucket="copy", names=other.names()
    )
    assert error.dependency == "replica" and error.reason == "access_denied"
    assert "STREAMER_REPLICA_SECRET_ACCESS_KEY" in error.message
    same = ReplicaSettings(replica_bucket="copy")
    gone = replica_error(
        client_error("NoSuchBucket", 404), "COPY", bucket="copy", names=same.names()
    )
    assert gone.reason == "bucket_missing" and "STREAMER_REPLICA_BUCKET" in gone.message
    assert "STREAMER_S3_ENDPOINT_URL" in gone.message  # same endpoint as the source


def test_an_outage_says_what_failed_without_blaming_credentials() -> None:
    down = object_store_error(EndpointConnectionError(endpoint_url="http://s3:9000"), "LIST a/")
    throttled = object_store_error(client_error("SlowDown", 503), "HEAD a.jpg")
    for error in (down, throttled):
        assert error.retriable and error.reason == "dependency_unavailable"
        assert "denied" not in error.message
    assert "SlowDown (HTTP 503)" in throttled.message


def test_the_open_circuit_carries_the_denial_for_the_readiness_probe() -> None:
    breaker = CircuitBreaker("s3", failure_threshold=2)
    denied = object_store_error(client_error("AccessDenied", 403), "HEAD a.jpg")
    breaker.record_failure(denied.message)
    breaker.record_failure(denied.message)
    assert breaker.state == "open"
    assert breaker.last_error is not None and "denied access" in breaker.last_error
    breaker.record_success()
    assert breaker.last_error is None


@pytest.mark.parametrize(
    "error",
    [
        PermissionDeniedError("Permission denied\nDebug source: ..."),
        UnauthenticatedError("The operation lacked valid authentication credentials\nDebug"),
        PermissionError("no AWS credentials found"),
    ],
    ids=["obstore-denied", "obstore-unauthenticated", "no-credentials"],
)
def test_an_obstore_denial_is_named_without_its_debug_dump(error: Exception) -> None:
    converted = object_store_error(error, "HEAD media/a.jpg")
    assert converted.retriable is True
    assert converted.reason == "access_denied"
    assert converted.message.startswith("HEAD media/a.jpg: ")
    assert "Debug" not in converted.message


def test_an_obstore_outage_is_retriable_and_not_a_denial() -> None:
    converted = object_store_error(
        GenericError("Generic S3 error: error sending request\nDebug source: {...}"), "LIST media/"
    )
    assert converted.retriable is True
    assert converted.message == (
        "S3 LIST media/ failed: GenericError: Generic S3 error: error sending request"
    )
