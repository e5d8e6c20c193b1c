"""ETag look-ups: a batch of S3 keys in, their ETag/size/content type (or "missing") out.

The handler sees one small interface, ``EtagSource``; what stands behind it decides
how each key is found. ``S3EtagSource`` asks S3 through obstore (Rust's
``object_store``: signing, HTTP and parsing outside the GIL) and chooses per batch
and per folder between a HEAD per key and a ListObjectsV2 of the folder (up to
1,000 ETags per request), by expected cost (``etag_plan``); ``head`` and ``list``
force one of them. Another source (an object index, say) can stand in front of it
and ask it only for the keys it does not know.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import obstore
from obstore.exceptions import BaseError

from streamer.gallery.etag_plan import KEY_COST, PAGE_KEYS, FolderSizes, plan_lookups
from streamer.gallery.metrics import GalleryMetrics
from streamer.gallery.state import ObjectInfo
from streamer.runtime import tracing
from streamer.storage.clients import make_object_store
from streamer.storage.errors import object_store_error
from streamer.storage.settings import S3Settings

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import S3Store

    from streamer.runtime.database import Database

__all__ = ["ETAG_SOURCES", "EtagSource", "S3EtagSource", "make_etag_source"]

T = TypeVar("T")
ETAG_SOURCES = ("auto", "head", "list")  # what S3EtagSource does; "index" stands in front
_HEAD_ONLY: GetOptions = {"head": True}
# What obstore raises when the store cannot answer (timeouts and refused connections are
# OSErrors, a failing credential provider's error comes back as it was raised).
_STORE_ERRORS = (BaseError, OSError, RuntimeError)


class EtagSource(Protocol):
    """Where a batch's ETags come from."""

    async def lookup(
        self, keys: Collection[str], *, fresh: Collection[str] = ()
    ) -> dict[str, ObjectInfo | None]:
        """Every key of ``keys`` (duplicates allowed) -> what is known of it, None if missing.

        ``fresh``: keys a source that remembers (an index) must ask the store about anew.
        Raises ``ObjectStoreUnavailable`` (retriable) when the store cannot answer."""
        ...

    async def close(self) -> None: ...


def _etag(value: str | None) -> str:
    return (value or "").strip('"')


class S3EtagSource:
    """HEADs and LISTs through one obstore store, at most ``concurrency`` requests in flight."""

    def __init__(
        self,
        store: S3Store,
        *,
        mode: str = "auto",
        concurrency: int = 32,
        metrics: GalleryMetrics | None = None,
        sizes: FolderSizes | None = None,
        page_keys: int = PAGE_KEYS,
        timeout_s: float = 5.0,
        bucket: str | None = None,
    ) -> None:
        if mode not in ETAG_SOURCES:
            raise ValueError(f"unknown ETag source {mode!r}; one of {', '.join(ETAG_SOURCES)}")
        self.store = store
        self.bucket = bucket  # for messages only: the store knows its bucket
        self.mode = mode
        self.sizes = sizes if sizes is not None else FolderSizes()
        self._concurrency = concurrency
        self._page_keys = page_keys  # how many listed keys count as one request
        # Plain totals, cheap to keep: what the benchmark reads beside the metrics.
        self.totals: Counter[str] = Counter()
        self._timeout_s = timeout_s
        self._last_activity = 0.0  # monotonic time a request last began or ended
        self._limit: asyncio.Semaphore | None = None
        self._metrics = metrics
        # Children bound once: they count every HEAD and every LIST page.
        self._requests = (
            {op: metrics.s3_requests.labels(op) for op in ("head", "list")} if metrics else {}
        )
        self._checks = (
            {r: metrics.etag_checks.labels(r) for r in ("found", "missing")} if metrics else {}
        )

    def _slot(self) -> asyncio.Semaphore:
        # Created on first use, inside the loop that uses it.
        if self._limit is None:
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._limit

    async def lookup(
        self, keys: Collection[str], *, fresh: Collection[str] = ()
    ) -> dict[str, ObjectInfo | None]:
        plan = plan_lookups(keys, self.sizes, self.mode)
        found: dict[str, ObjectInfo | None] = {}
        heads = list(plan.heads)
        listings = [
            self._list_folder(folder, wanted, budget)
            for folder, (wanted, budget) in plan.lists.items()
        ]
        for part, unresolved in await _all(listings):
            found.update(part)
            heads.extend(unresolved)
        tracing.annotate(
            {"streamer.etag.lists": len(plan.lists), "streamer.etag.heads": len(heads)}
        )
        if heads:
            infos = await _all([self._head(k) for k in heads])
            found.update(zip(heads, infos, strict=True))
            absent = [k for k, info in zip(heads, infos, strict=True) if info is None]
            if absent and not listings:
                # A listing that answered proves the bucket; without one, a 404 may be its.
                await self._confirm_bucket(absent[0])
        if self._checks:
            hits = sum(1 for v in found.values() if v is not None)
            self._checks["found"].inc(hits)
            self._checks["missing"].inc(len(found) - hits)
        return found

    async def _head(self, key: str) -> ObjectInfo | None:
        started = time.perf_counter()
        async with self._slot():
            self._last_activity = time.monotonic()
            try:
                # A GET that asks for no content is a HEAD that also returns the content type.
                result = await obstore.get_async(self.store, key, options=_HEAD_ONLY)
            except FileNotFoundError:
                return None
            except _STORE_ERRORS as exc:
                raise object_store_error(exc, f"HEAD {key}", bucket=self.bucket) from exc
            finally:
                self._last_activity = time.monotonic()
                self.totals["head"] += 1
                if self._metrics is not None:
                    self._metrics.head_latency.observe(time.perf_counter() - started)
                    self._requests["head"].inc()
        meta = result.meta
        return ObjectInfo(
            etag=_etag(meta["e_tag"]),
            size=meta["size"],
            content_type=result.attributes.get("Content-Type"),
        )

    async def _confirm_bucket(self, key: str) -> None:
        """HEAD answers 404 for a key that does not exist and for a bucket that does not: an
        absence is believed once a listing (under the key: nothing or next to nothing to
        read) shows the bucket is there. Otherwise the ``s3`` circuit opens and the batch
        waits; a wrong or deleted bucket never turns into ``object_missing``."""
        async with self._slot():
            self._last_activity = time.monotonic()
            try:
                async for _chunk in obstore.list(self.store, prefix=key, chunk_size=1):
                    break
            except _STORE_ERRORS as exc:
                raise object_store_error(
                    exc, f"confirming {key} is missing", bucket=self.bucket
                ) from exc
            finally:
                self._last_activity = time.monotonic()
                self.totals["list"] += 1
                if self._requests:
                    self._requests["list"].inc()

    async def _list_folder(
        self, folder: str, wanted: list[str], budget: float | None
    ) -> tuple[dict[str, ObjectInfo | None], list[str]]:
        """What a listing of ``folder`` says of the wanted keys, and the keys it left open
        (a listing stopped at its budget says nothing of keys past its last one)."""
        listed: dict[str, Any] = {}
        pages, complete, last = 0, True, ""
        async with self._slot():
            self._last_activity = time.monotonic()
            try:
                stream = obstore.list(self.store, prefix=folder, chunk_size=self._page_keys)
                async for chunk in stream:
                    pages += 1
                    for meta in chunk:
                        listed[meta["path"]] = meta
                    if chunk:
                        last = chunk[-1]["path"]
                    if budget is not None and pages + len(listed) * KEY_COST >= budget:
                        complete = False
                        break
            except FileNotFoundError:
                pass  # no such folder: every wanted key is missing
            except _STORE_ERRORS as exc:
                raise object_store_error(exc, f"LIST {folder}", bucket=self.bucket) from exc
            finally:
                self._last_activity = time.monotonic()
                self.totals["list"] += max(1, pages)
                self.totals["listed_keys"] += len(listed)
                if self._requests:
                    self._requests["list"].inc(max(1, pages))
        self.sizes.learn(folder, len(listed), complete=complete)
        found: dict[str, ObjectInfo | None] = {}
        unresolved: list[str] = []
        for key in wanted:
            hit = listed.get(key)
            if hit is not None:
                found[key] = ObjectInfo(etag=_etag(hit["e_tag"]), size=hit["size"])
            elif complete or key <= last:
                found[key] = None  # listings are in key order: it would have been listed
            else:
                unresolved.append(key)
        return found, unresolved

    async def close(self) -> None:
        """Let the store's threads finish what they were doing before the process exits.

        obstore completes requests on its own (Rust) threads, which take the GIL to hand
        results and drop Python objects. One that does so while the interpreter finalizes
        is ended by CPython 3.11 mid-Rust-frame and aborts the whole process (SIGABRT,
        no message): seen in about one exit in four right after a request, never after
        a short quiet period. So the worker's stop waits for one, bounded by the
        request timeout (a request cancelled on our side may still be in flight).
        """
        quiet_s = 0.25
        deadline = time.monotonic() + self._timeout_s + quiet_s
        while time.monotonic() < deadline:
            idle_s = time.monotonic() - self._last_activity
            if idle_s >= quiet_s:
                return
            await asyncio.sleep(quiet_s - idle_s)


async def _all(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every call's result; on failures, the first error, raised once every call has ended
    (none is left running behind the batch that gave up on them)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def make_etag_source(
    s3: S3Settings,
    mode: str = "auto",
    metrics: GalleryMetrics | None = None,
    *,
    database: Database | None = None,
) -> EtagSource:
    if mode == "index":
        from streamer.gallery.index_etags import IndexEtagSource

        if database is None:
            raise ValueError("the index ETag source reads the object index: it needs the database")
        fallback = make_etag_source(s3, "auto", metrics)
        return IndexEtagSource(database, s3.s3_bucket, fallback, metrics=metrics)
    return S3EtagSource(
        make_object_store(s3),
        mode=mode,
        concurrency=s3.head_concurrency,
        metrics=metrics,
        timeout_s=s3.head_timeout_s,
        bucket=s3.s3_bucket,
    )
