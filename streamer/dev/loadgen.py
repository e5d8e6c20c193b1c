"""Synthetic catalogs: SKUs with N-image galleries over a shared pool of objects in S3."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

from streamer.contract.events import MediaGalleryChanged
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key
from streamer.storage.settings import S3Settings

__all__ = ["SHAPES", "generate_catalog", "iter_catalog", "object_paths", "upload_objects"]


SHAPES = ("shared", "sharded")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def object_paths(n_objects: int, shape: str = "shared") -> list[str]:
    """The object pool. ``shared``: folders of 500 objects (each shared by many SKUs: LIST
    pays). ``sharded``: Magento's layout, a folder per first two letters of the file name
    (``/a/b/ab12cd34.jpg``, 1,296 folders: a few objects each, where HEAD pays)."""
    if shape == "shared":
        return [f"/bench/{i // 500:03d}/img-{i:06d}.jpg" for i in range(n_objects)]
    if shape != "sharded":
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    paths = []
    for i in range(n_objects):
        n = int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=6).digest())
        name = "".join(_BASE36[(n // 36**k) % 36] for k in range(8))
        paths.append(f"/{name[0]}/{name[1]}/{name}.jpg")
    return paths


def iter_catalog(
    n_skus: int,
    images_per_sku: int,
    paths: list[str],
    *,
    version: int,
    request_id: str | None = None,
    prefix: str = "BENCH",
) -> Iterator[MediaGalleryChanged]:
    """One gallery event per SKU, made as it is consumed: a catalog of millions never sits
    in memory whole."""
    now = datetime.now(UTC)
    for i in range(n_skus):
        sku = f"{prefix}-{i:07d}"
        chosen = [paths[(i * images_per_sku + k) % len(paths)] for k in range(images_per_sku)]
        yield MediaGalleryChanged.model_validate(
            {
                "event_id": str(uuid.uuid4()),
                "sku": sku,
                "version": version,
                "occurred_at": now,
                "source": "bench",
                "request_id": request_id,
                "mode": "REPLACE",
                "images": [
                    {
                        "file_path": p,
                        "label": f"{sku} {k}",
                        "position": k,
                        "roles": ["base"] if k == 0 else [],
                    }
                    for k, p in enumerate(chosen)
                ],
            }
        )


def generate_catalog(
    n_skus: int,
    images_per_sku: int,
    paths: list[str],
    *,
    version: int,
    request_id: str | None = None,
    prefix: str = "BENCH",
) -> list[MediaGalleryChanged]:
    return list(
        iter_catalog(
            n_skus, images_per_sku, paths, version=version, request_id=request_id, prefix=prefix
        )
    )


def upload_objects(
    settings: S3Settings, paths: list[str], progress: Callable[[int], None] | None = None
) -> None:
    """Put each path's object (its bytes derived from the path), skipping those the bucket
    already holds with the same bytes: a benchmark run again reuses the pool."""
    s3 = make_s3_client(settings, max_pool_connections=16)
    body = {s3_key(settings.s3_prefix, p): p.encode() * 16 for p in paths}
    held: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.s3_bucket, Prefix=s3_key(settings.s3_prefix, "/")
    ):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key in body and obj["ETag"].strip('"') == hashlib.md5(body[key]).hexdigest():  # noqa: S324 - S3's ETag
                held.add(key)

    def put(key: str) -> None:
        for attempt in range(5):  # a dev S3 server on a busy machine may time a put out
            if key in held:
                return
            try:
                s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=body[key])
                return
            except (ReadTimeoutError, ConnectTimeoutError):
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)

    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(put, body):
            if progress is not None:
                progress(1)
