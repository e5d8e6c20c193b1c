"""ETag look-ups against the S3 API server: HEAD and LIST agree, and a missing object is None."""

from __future__ import annotations

import hashlib

import pytest

from streamer.errors import ObjectStoreUnavailable
from streamer.gallery.etags import make_etag_source
from streamer.gallery.metrics import GalleryMetrics
from streamer.runtime.metrics import new_registry
from streamer.storage.keys import s3_key

pytestmark = pytest.mark.integration


def test_s3_key_joins_prefix_and_normalised_path() -> None:
    assert s3_key("media/catalog/product", "/a/b.jpg") == "media/catalog/product/a/b.jpg"
    assert s3_key("/media/", "/a/b.jpg") == "media/a/b.jpg"
    assert s3_key("", "/a/b.jpg") == "a/b.jpg"


@pytest.mark.parametrize("source", ["head", "list"])
async def test_lookup_returns_etag_size_and_missing(make_settings, s3_client, source: str) -> None:
    settings = make_settings(etag_source=source)
    bodies = {f"/x/{i}.jpg": f"body {i}".encode() * (i + 1) for i in range(5)}
    for path, body in bodies.items():
        s3_client.put_object(
            Bucket=settings.s3.s3_bucket,
            Key=s3_key(settings.s3.s3_prefix, path),
            Body=body,
            ContentType="image/jpeg",
        )
    metrics = GalleryMetrics(new_registry())
    etags = make_etag_source(settings.s3, settings.gallery.etag_source, metrics)
    try:
        keys = [
            s3_key(settings.s3.s3_prefix, p) for p in [*bodies, "/x/missing.jpg", "/y/none.jpg"]
        ]
        found = await etags.lookup(keys + keys[:2])  # duplicates are looked up once
    finally:
        etags.close()
    assert set(found) == set(keys)
    for path, body in bodies.items():
        info = found[s3_key(settings.s3.s3_prefix, path)]
        assert info is not None
        assert info.etag == hashlib.md5(body).hexdigest()
        assert info.size == len(body)
    assert found[s3_key(settings.s3.s3_prefix, "/x/missing.jpg")] is None
    assert found[s3_key(settings.s3.s3_prefix, "/y/none.jpg")] is None
    assert metrics.registry.get_sample_value("streamer_etag_checks_total", {"result": "found"}) == 5
    assert (
        metrics.registry.get_sample_value("streamer_etag_checks_total", {"result": "missing"}) == 2
    )
    if source == "head":
        assert (
            metrics.registry.get_sample_value("streamer_s3_requests_total", {"operation": "head"})
            == 7
        )
    else:
        assert (
            metrics.registry.get_sample_value("streamer_s3_requests_total", {"operation": "list"})
            == 2
        )


async def test_unreachable_endpoint_is_a_retriable_error(make_settings) -> None:
    settings = make_settings(s3_endpoint_url="http://127.0.0.1:1", head_timeout_s=1.0)
    etags = make_etag_source(settings.s3)
    try:
        with pytest.raises(ObjectStoreUnavailable) as info:
            await etags.lookup(["media/a.jpg"])
    finally:
        etags.close()
    assert info.value.retriable is True
