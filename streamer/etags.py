"""ETag look-ups: a batch of S3 keys in, their ETag/size/content type (or "missing") out.

Two sources sit behind one interface. ``HeadEtagSource`` sends one HEAD per
key, concurrently under a bound, through one shared boto3 client whose
connection pool is sized to that bound. ``ListEtagSource`` lists the folders a
batch touches with ListObjectsV2 (up to 1,000 ETags per request), which costs
far less client CPU per key when a batch touches many keys of few folders.
boto3 is blocking, so calls run in a thread pool owned by the source.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from streamer.config import Settings
from streamer.errors import ObjectStoreUnavailable
from streamer.gallery import ObjectInfo
from streamer.metrics import Metrics

__all__ = [
    "EtagSource",
    "HeadEtagSource",
    "ListEtagSource",
    "make_etag_source",
    "make_s3_client",
    "s3_key",
]

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def s3_key(prefix: str, file_path: str) -> str:
    """The object key of a normalised file path (``/a/b.jpg``) under the configured prefix."""
    prefix = prefix.strip("/")
    return f"{prefix}{file_path}" if prefix else file_path.lstrip("/")


def _as_sent(value: str) -> str:
    return value


def make_s3_client(settings: Settings, *, max_pool_connections: int | None = None) -> Any:
    config = Config(
        max_pool_connections=max_pool_connections or settings.head_concurrency,
        connect_timeout=settings.head_timeout_s,
        read_timeout=settings.head_timeout_s,
        retries={"max_attempts": 1, "mode": "standard"},  # streamer retries with its own backoff
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


def _unavailable(exc: Exception, what: str) -> ObjectStoreUnavailable:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return ObjectStoreUnavailable(f"S3 {what} failed: {code} (HTTP {status})")
    return ObjectStoreUnavailable(f"S3 {what} failed: {type(exc).__name__}: {exc}")


class EtagSource(Protocol):
    async def lookup(self, keys: Collection[str]) -> dict[str, ObjectInfo | None]: ...

    async def ping(self) -> None: ...

    def close(self) -> None: ...


class _ThreadedSource:
    def __init__(self, client: Any, bucket: str, concurrency: int, metrics: Metrics | None) -> None:
        self._client = client
        self._bucket = bucket
        self._concurrency = concurrency
        self._metrics = metrics
        self._executor: ThreadPoolExecutor | None = None
        # Children bound once: these count every HEAD or LIST page.
        self._requests = (
            {op: metrics.s3_requests.labels(op) for op in ("head", "list")} if metrics else {}
        )

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="s3")
        return self._executor

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)

    async def ping(self) -> None:
        """HEAD the bucket: the circuit breaker's probe."""
        await self._run(self._head_bucket)

    def _head_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable(exc, f"HEAD bucket {self._bucket}") from exc

    def _count(self, found: dict[str, ObjectInfo | None]) -> None:
        if self._metrics is None:
            return
        hits = sum(1 for v in found.values() if v is not None)
        self._metrics.etag_checks.labels("found").inc(hits)
        self._metrics.etag_checks.labels("missing").inc(len(found) - hits)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class HeadEtagSource(_ThreadedSource):
    """One HEAD per distinct key, at most ``concurrency`` in flight."""

    def _head(self, key: str) -> ObjectInfo | None:
        started = time.perf_counter()
        try:
            resp = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                return None
            raise _unavailable(exc, f"HEAD {key}") from exc
        except BotoCoreError as exc:
            raise _unavailable(exc, f"HEAD {key}") from exc
        finally:
            if self._metrics is not None:
                self._metrics.head_latency.observe(time.perf_counter() - started)
                self._requests["head"].inc()
        return ObjectInfo(
            etag=str(resp.get("ETag", "")).strip('"'),
            size=int(resp.get("ContentLength", 0)),
            content_type=resp.get("ContentType"),
        )

    async def lookup(self, keys: Collection[str]) -> dict[str, ObjectInfo | None]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        results = await asyncio.gather(
            *(self._run(self._head, k) for k in unique), return_exceptions=True
        )
        found: dict[str, ObjectInfo | None] = {}
        for key, result in zip(unique, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            found[key] = result
        self._count(found)
        return found


class ListEtagSource(_ThreadedSource):
    """ListObjectsV2 over the parent folder of each key: up to 1,000 ETags per request."""

    def _list_folder(self, folder: str) -> dict[str, ObjectInfo]:
        out: dict[str, ObjectInfo] = {}
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": folder, "Delimiter": "/"}
        while True:
            try:
                resp = self._client.list_objects_v2(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise _unavailable(exc, f"LIST {folder}") from exc
            if self._metrics is not None:
                self._requests["list"].inc()
            for obj in resp.get("Contents", []):
                out[obj["Key"]] = ObjectInfo(
                    etag=str(obj.get("ETag", "")).strip('"'), size=int(obj.get("Size", 0))
                )
            if not resp.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    async def lookup(self, keys: Collection[str]) -> dict[str, ObjectInfo | None]:
        unique = list(dict.fromkeys(keys))
        folders = sorted({k.rsplit("/", 1)[0] + "/" if "/" in k else "" for k in unique})
        listed = await asyncio.gather(*(self._run(self._list_folder, f) for f in folders))
        objects: dict[str, ObjectInfo] = {}
        for part in listed:
            objects.update(part)
        found: dict[str, ObjectInfo | None] = {k: objects.get(k) for k in unique}
        self._count(found)
        return found


def make_etag_source(settings: Settings, metrics: Metrics | None = None) -> EtagSource:
    client = make_s3_client(settings)
    if settings.etag_source == "list":
        return ListEtagSource(client, settings.s3_bucket, settings.head_concurrency, metrics)
    return HeadEtagSource(client, settings.s3_bucket, settings.head_concurrency, metrics)
