"""S3 clients built from ``S3Settings``: the standard AWS credential chain unless keys are set."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.session
from botocore.config import Config

from streamer.storage.settings import S3Settings

__all__ = ["make_s3_client"]


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
