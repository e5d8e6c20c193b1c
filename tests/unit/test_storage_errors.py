"""S3 failures: an access denial pauses like an outage but says what to check."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

from streamer.runtime.circuit import CircuitBreaker
from streamer.storage.errors import object_store_error

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
def test_a_denial_names_the_credentials_and_the_policy(code: str, status: int) -> None:
    error = object_store_error(client_error(code, status), "HEAD media/a.jpg")
    assert error.retriable and error.dependency == "s3"
    assert error.reason == "access_denied"
    assert "denied access to HEAD media/a.jpg" in error.message
    assert "credentials" in error.message and "bucket policy" in error.message


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
    assert "denied access to HEAD media/a.jpg" in converted.message
    assert "Debug" not in converted.message


def test_an_obstore_outage_is_retriable_and_not_a_denial() -> None:
    converted = object_store_error(
        GenericError("Generic S3 error: error sending request\nDebug source: {...}"), "LIST media/"
    )
    assert converted.retriable is True
    assert converted.message == (
        "S3 LIST media/ failed: GenericError: Generic S3 error: error sending request"
    )
