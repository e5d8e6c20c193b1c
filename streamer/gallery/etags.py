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

from botocore.exceptions import BotoCoreError, ClientError

from streamer.gallery.metrics import GalleryMetrics
from streamer.gallery.state import ObjectInfo
from streamer.storage.clients import make_s3_client
from streamer.storage.errors import MISSING_CODES, error_code, object_store_error
from streamer.storage.settings import S3Settings

__all__ = ["EtagSource", "HeadEtagSource", "ListEtagSource", "make_etag_source"]


class EtagSource(Protocol):
    async def lookup(self, keys: Collection[str]) -> dict[str, ObjectInfo | None]: ...

    async def ping(self) -> None: ...

    def close(self) -> None: ...


class _ThreadedSource:
    def __init__(
        self, client: Any, bucket: str, concurrency: int, metrics: GalleryMetrics | None
    ) -> None:
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
            raise object_store_error(exc, f"HEAD bucket {self._bucket}") from exc

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
            if error_code(exc) in MISSING_CODES:
                return None
            raise object_store_error(exc, f"HEAD {key}") from exc
        except BotoCoreError as exc:
            raise object_store_error(exc, f"HEAD {key}") from exc
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
                raise object_store_error(exc, f"LIST {folder}") from exc
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


def make_etag_source(
    s3: S3Settings, kind: str = "head", metrics: GalleryMetrics | None = None
) -> EtagSource:
    client = make_s3_client(s3)
    source = ListEtagSource if kind == "list" else HeadEtagSource
    return source(client, s3.s3_bucket, s3.head_concurrency, metrics)
