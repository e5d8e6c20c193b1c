"""S3's notifications in an SQS queue: the client, and the queue checked at start."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from streamer.errors import ConfigError
from streamer.storage.errors import error_code, refusal
from streamer.storage.settings import S3Settings

__all__ = ["check_queue", "make_sqs_client"]

log = logging.getLogger(__name__)


def make_sqs_client(queue_url: str, s3: S3Settings) -> Any:
    """A boto3 SQS client for the queue's own endpoint (AWS's regional one, or moto's), with
    the credentials of the bucket that notifies it."""
    parts = urlsplit(queue_url)
    secret = s3.s3_secret_access_key
    host = parts.hostname or ""
    region = host.split(".")[1] if host.startswith("sqs.") and host.count(".") >= 3 else None
    return boto3.client(
        "sqs",
        endpoint_url=f"{parts.scheme}://{parts.netloc}",
        region_name=region or s3.s3_region,
        aws_access_key_id=s3.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=30),
    )


async def check_queue(client: Any, url: str) -> None:
    """The queue with the credentials the worker will use: a queue that does not exist or
    refused credentials end the start (``ConfigError``); one that does not answer yet is
    waited for like any outage."""
    queue = url.rstrip("/").rsplit("/", 1)[-1]
    try:
        await asyncio.to_thread(
            client.get_queue_attributes, QueueUrl=url, AttributeNames=["QueueArn"]
        )
    except (BotoCoreError, ClientError) as exc:
        code = error_code(exc) if isinstance(exc, ClientError) else ""
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            raise ConfigError(
                f"the SQS queue {queue!r} does not exist ({code}): check STREAMER_OBJECTS_SQS_URL"
            ) from exc
        if refusal(exc) is not None or code in (
            "InvalidClientTokenId",
            "UnrecognizedClientException",
        ):
            raise ConfigError(
                f"SQS refused these credentials for queue {queue!r} ({code or '403'}): "
                "check STREAMER_S3_ACCESS_KEY_ID and STREAMER_S3_SECRET_ACCESS_KEY (or the "
                "AWS credential chain) and the queue's policy"
            ) from exc
        log.warning("SQS queue %s: %s; receives wait for it to answer", queue, exc)
