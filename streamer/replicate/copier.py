"""Source and destination stores, and one path made identical at the destination.

Same endpoint (``STREAMER_REPLICA_ENDPOINT_URL`` unset): CopyObject, so S3 moves the bytes
and none pass through the worker. Another endpoint: the source's GET body is streamed into
the destination through boto3's managed upload, one part (``STREAMER_REPLICA_PART_SIZE_BYTES``)
buffered at a time and nothing written to disk, so memory stays below
``concurrency x part size``. Either way the copy carries the source's content type,
cache and content headers and user metadata, and records the source ETag it copied as
``x-amz-meta-streamer-source-etag``. The copy is conditional on the source ETag checked by
HEAD (CopySourceIfMatch / If-Match): the size limit checked is the size copied.

boto3 is blocking: every request runs in a thread pool sized to the concurrency bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from streamer.replicate.errors import SourceChanged, replica_error
from streamer.replicate.metrics import REQUESTS, ReplicaMetrics
from streamer.replicate.rules import SOURCE_ETAG_KEY, ReplicaHead, is_identical
from streamer.runtime import tracing
from streamer.storage.checks import confirm_bucket
from streamer.storage.errors import (
    MISSING_CODES,
    SOURCE,
    ObjectStoreUnavailable,
    StoreNames,
    error_code,
    object_store_error,
)
from streamer.storage.keys import s3_key

__all__ = ["Call", "Copier", "Ensured", "Failed", "SourceObject"]

T = TypeVar("T")
Call = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
# Headers a copy carries over (boto3 parameter names, as HEAD returns them).
CARRIED = (
    "ContentType",
    "CacheControl",
    "ContentDisposition",
    "ContentEncoding",
    "ContentLanguage",
)
_CHANGE_ATTEMPTS = 3


@dataclass(frozen=True)
class SourceObject:
    etag: str
    size: int
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ensured:
    """The destination holds the source's bytes for this path: ``copied`` or ``identical``."""

    result: str
    etag: str
    size: int
    copied_bytes: int = 0


@dataclass(frozen=True)
class Failed:
    """The path cannot be replicated now; the image is dead-lettered with this reason."""

    reason: str
    message: str


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


class Copier:
    def __init__(
        self,
        source: Any,
        source_bucket: str,
        source_prefix: str,
        replica: Any,
        replica_bucket: str,
        replica_prefix: str,
        *,
        server_side: bool,
        concurrency: int,
        part_size_bytes: int,
        max_image_bytes: int,
        metrics: ReplicaMetrics,
        replica_names: StoreNames | None = None,
    ) -> None:
        self.source = source
        self.source_bucket = source_bucket
        self.source_prefix = source_prefix
        self.replica = replica
        self.replica_bucket = replica_bucket
        self.replica_prefix = replica_prefix
        self.replica_names = replica_names
        self.server_side = server_side
        self.mode = "server_side" if server_side else "streamed"
        self.max_image_bytes = max_image_bytes
        self.metrics = metrics
        self._concurrency = concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._transfer = TransferConfig(
            multipart_threshold=part_size_bytes,
            multipart_chunksize=part_size_bytes,
            max_concurrency=1,
            use_threads=False,
        )
        self._requests = {(t, op): metrics.requests.labels(t, op) for t, op in REQUESTS}

    def source_key(self, path: str) -> str:
        return s3_key(self.source_prefix, path)

    def replica_key(self, path: str) -> str:
        return s3_key(self.replica_prefix, path)

    def replica_path(self, key: str) -> str | None:
        """The file path of a destination key, or None when the key is outside the prefix."""
        prefix = self.replica_prefix.strip("/")
        if not prefix:
            return "/" + key
        return key[len(prefix) :] if key.startswith(prefix + "/") else None

    def source_path(self, key: str) -> str | None:
        prefix = self.source_prefix.strip("/")
        if not prefix:
            return "/" + key
        return key[len(prefix) :] if key.startswith(prefix + "/") else None

    # -- the thread pool -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="replica")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._counted, fn, *args
        )

    def _counted(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs on a pool thread: in flight means sent, not queued for a thread."""
        with self.metrics.in_flight.track_inprogress():
            return fn(*args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _source_error(self, exc: Exception, what: str) -> Exception:
        return object_store_error(exc, what, bucket=self.source_bucket, names=SOURCE)

    def _replica_error(self, exc: Exception, what: str) -> Exception:
        return replica_error(exc, what, bucket=self.replica_bucket, names=self.replica_names)

    # -- single requests (blocking, run in the pool) ----------------------------------------

    def _head_source(self, path: str) -> SourceObject | None:
        key = self.source_key(path)
        self._requests[("source", "head")].inc()
        try:
            resp = self.source.head_object(Bucket=self.source_bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in MISSING_CODES:
                # 404 is also a HEAD's answer for a bucket that does not exist: believed only
                # once the bucket is known to be there (a deleted bucket pauses, not dead-letters).
                self._requests[("source", "list")].inc()
                confirm_bucket(self.source, self.source_bucket, key)
                return None
            raise self._source_error(exc, f"HEAD {key}") from exc
        except BotoCoreError as exc:
            raise self._source_error(exc, f"HEAD {key}") from exc
        return SourceObject(
            etag=_etag(resp.get("ETag")),
            size=int(resp.get("ContentLength", 0)),
            headers={h: str(resp[h]) for h in CARRIED if resp.get(h)},
            metadata=dict(resp.get("Metadata") or {}),
        )

    def _head_replica(self, path: str) -> ReplicaHead | None:
        key = self.replica_key(path)
        self._requests[("replica", "head")].inc()
        try:
            resp = self.replica.head_object(Bucket=self.replica_bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            raise self._replica_error(exc, f"HEAD {key}") from exc
        except BotoCoreError as exc:
            raise self._replica_error(exc, f"HEAD {key}") from exc
        meta = resp.get("Metadata") or {}
        return ReplicaHead(
            etag=_etag(resp.get("ETag")),
            source_etag=meta.get(SOURCE_ETAG_KEY),
            size=int(resp.get("ContentLength", 0)),
        )

    def _copy_server_side(self, path: str, src: SourceObject) -> None:
        key = self.replica_key(path)
        self._requests[("replica", "copy")].inc()
        try:
            self.replica.copy_object(
                Bucket=self.replica_bucket,
                Key=key,
                CopySource={"Bucket": self.source_bucket, "Key": self.source_key(path)},
                CopySourceIfMatch=f'"{src.etag}"',
                MetadataDirective="REPLACE",
                Metadata={**src.metadata, SOURCE_ETAG_KEY: src.etag},
                **src.headers,
            )
        except ClientError as exc:
            code = error_code(exc)
            if code in MISSING_CODES or code in ("PreconditionFailed", "412"):
                raise SourceChanged(f"{self.source_key(path)} changed during the copy") from exc
            raise self._replica_error(exc, f"COPY to {key}") from exc
        except BotoCoreError as exc:
            raise self._replica_error(exc, f"COPY to {key}") from exc

    def _copy_streamed(self, path: str, src: SourceObject) -> None:
        source_key, key = self.source_key(path), self.replica_key(path)
        self._requests[("source", "get")].inc()
        try:
            resp = self.source.get_object(
                Bucket=self.source_bucket, Key=source_key, IfMatch=f'"{src.etag}"'
            )
        except ClientError as exc:
            code = error_code(exc)
            if code in MISSING_CODES or code in ("PreconditionFailed", "412"):
                raise SourceChanged(f"{source_key} changed during the copy") from exc
            raise self._source_error(exc, f"GET {source_key}") from exc
        except BotoCoreError as exc:
            raise self._source_error(exc, f"GET {source_key}") from exc
        body = resp["Body"]
        self._requests[("replica", "put")].inc()
        try:
            self.replica.upload_fileobj(
                body,
                self.replica_bucket,
                key,
                ExtraArgs={"Metadata": {**src.metadata, SOURCE_ETAG_KEY: src.etag}, **src.headers},
                Config=self._transfer,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._replica_error(exc, f"PUT {key}") from exc
        except (OSError, ValueError) as exc:
            # The source stream broke off mid-body: nothing was completed at the destination.
            raise ObjectStoreUnavailable(f"reading {source_key} failed: {exc}") from exc
        finally:
            body.close()

    def _delete(self, path: str) -> None:
        key = self.replica_key(path)
        self._requests[("replica", "delete")].inc()
        try:
            self.replica.delete_object(Bucket=self.replica_bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._replica_error(exc, f"DELETE {key}") from exc

    # -- what the handler and verify call --------------------------------------------------

    async def head_source(self, path: str) -> SourceObject | None:
        return await self._run(self._head_source, path)

    async def head_replica(self, path: str) -> ReplicaHead | None:
        return await self._run(self._head_replica, path)

    async def copy(self, path: str, src: SourceObject) -> None:
        started = time.perf_counter()
        fn = self._copy_server_side if self.server_side else self._copy_streamed
        with tracing.span("replica copy", {"streamer.bytes": src.size, "streamer.copy": self.mode}):
            await self._run(fn, path, src)
        self.metrics.copy_latency.observe(time.perf_counter() - started)
        self.metrics.copies.labels(self.mode).inc()
        self.metrics.copied_bytes.labels(self.mode).inc(src.size)

    async def delete(self, path: str) -> None:
        await self._run(self._delete, path)
        self.metrics.deletes.inc()

    async def ensure(self, path: str, call: Call) -> Ensured | Failed:
        """Make the destination hold the source's current bytes of ``path``, copying only
        when it does not already: a redelivered batch costs two HEADs per path, no copy."""
        for _ in range(_CHANGE_ATTEMPTS):
            replica, src = await asyncio.gather(
                call("replica", partial(self.head_replica, path)),
                call("s3", partial(self.head_source, path)),
            )
            if src is None:
                key = self.source_key(path)
                return Failed("object_missing", f"{key} does not exist in {self.source_bucket}")
            if src.size > self.max_image_bytes:
                return Failed(
                    "object_too_large",
                    f"{self.source_key(path)} is {src.size} bytes, over the limit of "
                    f"{self.max_image_bytes} (STREAMER_REPLICA_MAX_IMAGE_BYTES)",
                )
            if is_identical(replica, src.etag):
                return Ensured("identical", src.etag, src.size)
            try:
                await call("replica", partial(self.copy, path, src))
            except SourceChanged:
                continue
            return Ensured("copied", src.etag, src.size, copied_bytes=src.size)
        raise ObjectStoreUnavailable(
            f"{self.source_key(path)} kept changing during {_CHANGE_ATTEMPTS} copy attempts"
        )

    # -- listings for verify ---------------------------------------------------------------

    def _list(self, client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            resp = client.list_objects_v2(**kwargs)
            yield from resp.get("Contents", [])
            if not resp.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def list_source(self, path_prefix: str) -> Iterator[tuple[str, str, int]]:
        """(file path, ETag, size) of every source object under ``path_prefix``."""
        try:
            for obj in self._list(self.source, self.source_bucket, self.source_key(path_prefix)):
                path = self.source_path(obj["Key"])
                if path is not None:
                    yield path, _etag(obj.get("ETag")), int(obj.get("Size", 0))
        except (ClientError, BotoCoreError) as exc:
            raise self._source_error(exc, f"LIST {self.source_bucket}") from exc

    def list_replica(self, path_prefix: str) -> Iterator[tuple[str, str, int]]:
        try:
            for obj in self._list(self.replica, self.replica_bucket, self.replica_key(path_prefix)):
                path = self.replica_path(obj["Key"])
                if path is not None:
                    yield path, _etag(obj.get("ETag")), int(obj.get("Size", 0))
        except (ClientError, BotoCoreError) as exc:
            raise self._replica_error(exc, f"LIST {self.replica_bucket}") from exc
