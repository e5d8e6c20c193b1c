"""The bucket checked at start, with the credentials the job will use, before anything changes.

One ListObjectsV2 of at most one key under the job's prefix. A bucket that does not exist
or credentials the store refuses end the start with ``ObjectStoreMisconfigured``, naming
the setting to fix: the worker never joins its group, the tool never writes. A store that
does not answer is an outage, not a configuration: the caller decides whether to wait.

Listing needs ``s3:ListBucket`` on the bucket, which the jobs need anyway: the gallery
lists folders, verify and reconcile list the bucket, and on AWS a HEAD of a missing key
without it answers 403, which streamer reads as a denial.

``confirm_bucket`` is the running counterpart: a HEAD's 404 is believed only once a
listing under the missing key shows the bucket is there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamer.errors import DependencyUnavailable
from streamer.storage.clients import make_s3_client
from streamer.storage.errors import (
    SOURCE,
    ObjectStoreMisconfigured,
    ObjectStoreUnavailable,
    StoreNames,
    object_store_error,
    refusal,
)
from streamer.storage.settings import S3Settings

__all__ = ["check_bucket", "check_bucket_at_start", "check_bucket_with", "confirm_bucket"]

log = logging.getLogger(__name__)


def check_bucket(settings: S3Settings, names: StoreNames = SOURCE) -> None:
    """Raise ``ObjectStoreMisconfigured`` unless the bucket of ``settings`` exists and lists
    for these credentials; ``ObjectStoreUnavailable`` when the store does not answer."""
    client = make_s3_client(settings, max_pool_connections=1)
    check_bucket_with(client, settings.s3_bucket, settings.s3_prefix, names)


async def check_bucket_at_start(settings: S3Settings, names: StoreNames = SOURCE) -> None:
    """What a worker runs at start: a misconfiguration ends it, an outage is waited out
    like any outage (its batches pause until the store answers)."""
    try:
        await asyncio.to_thread(check_bucket, settings, names)
    except ObjectStoreUnavailable as exc:
        log.warning("%s; batches wait for the store to answer", exc.message)


def check_bucket_with(client: Any, bucket: str, prefix: str, names: StoreNames = SOURCE) -> None:
    """``check_bucket`` with a client the caller already holds."""
    base = prefix.strip("/")
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=f"{base}/" if base else "", MaxKeys=1)
    except (ClientError, BotoCoreError) as exc:
        found = refusal(exc)
        if found is not None:
            raise ObjectStoreMisconfigured(found.explain(names, bucket)) from exc
        raise object_store_error(exc, f"checking bucket {bucket!r}", names=names) from exc


def confirm_bucket(
    client: Any,
    bucket: str,
    key: str,
    names: StoreNames = SOURCE,
    error: type[DependencyUnavailable] = ObjectStoreUnavailable,
) -> None:
    """After a HEAD of ``key`` answered 404: raise (retriable) unless the bucket exists."""
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except (ClientError, BotoCoreError) as exc:
        raise object_store_error(
            exc, f"confirming {key} is missing", bucket=bucket, names=names, error=error
        ) from exc
