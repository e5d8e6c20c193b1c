"""S3 clients built from ``S3Settings``: the standard AWS credential chain unless keys are set.

Two clients, each where it is best. boto3 for uploads and bucket administration
(tools, demo, loadgen). obstore (Rust's ``object_store``) for the look-ups on the
consumer's hot path: its requests are signed, sent and parsed outside the GIL, at
about a third of boto3's client CPU per HEAD and a sixth per listed key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config

from streamer.storage.settings import S3Settings

if TYPE_CHECKING:
    from obstore.store import S3Credential, S3Store

__all__ = ["AwsChainCredentials", "make_object_store", "make_s3_client"]

# botocore refreshes temporary credentials at least 10 minutes before they expire,
# so credentials it hands out live at least that long: a shorter TTL never signs
# with expired ones.
_CREDENTIALS_TTL = timedelta(minutes=5)


def _as_sent(value: str) -> str:
    return value


def make_s3_client(
    settings: S3Settings,
    *,
    max_pool_connections: int | None = None,
    signature_version: str | None = None,
) -> Any:
    """A boto3 client; streamer retries with its own backoff, so boto3 tries once.

    ``signature_version="s3v4"`` for presigned URLs: SigV4 is what every region and
    S3-compatible store accepts, and its URLs carry their lifetime (``X-Amz-Expires``).
    """
    config = Config(
        signature_version=signature_version,
        max_pool_connections=max_pool_connections or settings.head_concurrency,
        connect_timeout=settings.head_timeout_s,
        read_timeout=settings.head_timeout_s,
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    secret = settings.s3_secret_access_key
    core = botocore.session.get_session()
    # Timestamps (LastModified of every listed key) are never read here, and
    # botocore's dateutil parsing of them is about half of a LIST page's client
    # CPU: keep them as the wire strings, as the AWS CLI's scalar parsing does.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_as_sent)
    return boto3.session.Session(botocore_session=core).client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        config=config,
    )


class AwsChainCredentials:
    """obstore's credentials from boto3's chain (``AWS_*`` variables, profiles, SSO,
    container and instance roles), refreshed as boto3 refreshes them.

    Resolved at the first request, not at construction, so a worker without
    credentials starts, and its look-ups fail as retriable errors naming the cause.
    """

    def __init__(self, region: str) -> None:
        self._region = region
        self._credentials: Any = None

    def __call__(self) -> S3Credential:
        if self._credentials is None:
            self._credentials = boto3.session.Session(region_name=self._region).get_credentials()
        if self._credentials is None:
            raise PermissionError(
                "no AWS credentials found: set STREAMER_S3_ACCESS_KEY_ID and "
                "STREAMER_S3_SECRET_ACCESS_KEY, or configure the AWS chain"
            )
        frozen = self._credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + _CREDENTIALS_TTL,
        }


def make_object_store(settings: S3Settings) -> S3Store:
    """An obstore S3 store with the same endpoint, region, path style and credentials
    as ``make_s3_client``; it tries once (streamer retries with its own backoff)."""
    from obstore.store import S3Store

    endpoint = settings.s3_endpoint_url
    options: dict[str, Any] = {
        "timeout": timedelta(seconds=settings.head_timeout_s),
        "connect_timeout": timedelta(seconds=settings.head_timeout_s),
        "allow_http": bool(endpoint and endpoint.startswith("http://")),
    }
    config: dict[str, Any] = {
        "region": settings.s3_region,
        "virtual_hosted_style_request": False,
    }
    if endpoint:
        config["endpoint"] = endpoint
    secret = settings.s3_secret_access_key
    provider = None
    if settings.s3_access_key_id and secret is not None:
        config["access_key_id"] = settings.s3_access_key_id
        config["secret_access_key"] = secret.get_secret_value()
    else:
        provider = AwsChainCredentials(settings.s3_region)
    return S3Store(
        settings.s3_bucket,
        config=config,  # type: ignore[arg-type]
        client_options=options,  # type: ignore[arg-type]
        retry_config={"max_retries": 0},
        credential_provider=provider,
    )
