"""ETag look-ups against the S3 API server: HEAD, LIST and the cost-based choice agree, a
missing object is None (a missing bucket is an outage), and a listing stopped at its budget
leaves nothing unresolved."""

from __future__ import annotations

import hashlib

import pytest

from streamer.gallery.etag_plan import FolderSizes
from streamer.gallery.etags import S3EtagSource, make_etag_source
from streamer.gallery.metrics import GalleryMetrics
from streamer.runtime.metrics import new_registry
from streamer.storage.clients import make_object_store
from streamer.storage.errors import ObjectStoreUnavailable
from streamer.storage.keys import s3_key

pytestmark = pytest.mark.integration


def test_s3_key_joins_prefix_and_normalised_path() -> None:
    assert s3_key("media/catalog/product", "/a/b.jpg") == "media/catalog/product/a/b.jpg"
    assert s3_key("/media/", "/a/b.jpg") == "media/a/b.jpg"
    assert s3_key("", "/a/b.jpg") == "a/b.jpg"


def requests(metrics: GalleryMetrics, operation: str) -> float:
    value = metrics.registry.get_sample_value(
        "streamer_s3_requests_total", {"operation": operation}
    )
    return value or 0.0


@pytest.mark.parametrize("source", ["head", "list", "auto"])
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
        await etags.close()
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
    if source == "list":
        assert requests(metrics, "list") == 2 and requests(metrics, "head") == 0
    else:  # auto: too few keys per folder to be worth a listing
        # and one listing under a missing key: a HEAD's 404 is also a missing bucket's answer.
        assert requests(metrics, "head") == 7 and requests(metrics, "list") == 1


@pytest.mark.parametrize("source", ["head", "list"])
async def test_a_bucket_that_does_not_exist_is_an_outage_not_missing_objects(
    make_settings, source: str
) -> None:
    settings = make_settings(etag_source=source, s3_bucket="no-such-bucket")
    etags = make_etag_source(settings.s3, settings.gallery.etag_source)
    try:
        with pytest.raises(ObjectStoreUnavailable) as info:
            await etags.lookup([s3_key(settings.s3.s3_prefix, "/x/a.jpg")])
    finally:
        await etags.close()
    assert info.value.retriable and info.value.reason == "bucket_missing"
    assert "'no-such-bucket' does not exist" in info.value.message
    assert "STREAMER_S3_BUCKET" in info.value.message


async def test_unreachable_endpoint_is_a_retriable_error(make_settings) -> None:
    settings = make_settings(s3_endpoint_url="http://127.0.0.1:1", head_timeout_s=1.0)
    etags = make_etag_source(settings.s3)
    try:
        with pytest.raises(ObjectStoreUnavailable) as info:
            await etags.lookup(["media/a.jpg"])
    finally:
        await etags.close()
    assert info.value.retriable is True


async def test_auto_learns_folder_sizes_and_stops_a_listing_at_its_budget(
    make_settings, s3_client
) -> None:
    settings = make_settings()
    prefix = settings.s3.s3_prefix
    bodies = {f"/f/{i:03d}.jpg": f"b{i}".encode() for i in range(150)}
    for path, body in bodies.items():
        s3_client.put_object(Bucket=settings.s3.s3_bucket, Key=s3_key(prefix, path), Body=body)
    metrics = GalleryMetrics(new_registry())
    sizes = FolderSizes()
    # Ten keys count as one request here, so a listing of 150 keys crosses a budget of 16.
    source = S3EtagSource(
        make_object_store(settings.s3), metrics=metrics, sizes=sizes, page_keys=10
    )
    early = [f"/f/{i:03d}.jpg" for i in range(0, 40, 5)]
    late = [f"/f/{i:03d}.jpg" for i in range(142, 150)]
    missing = ["/f/000a-missing.jpg", "/f/zzz-missing.jpg"]
    wanted = [s3_key(prefix, p) for p in [*early, *late, *missing]]
    found = await source.lookup(wanted)
    for path in [*early, *late]:
        info = found[s3_key(prefix, path)]
        assert info is not None and info.etag == hashlib.md5(bodies[path]).hexdigest()
    assert all(found[s3_key(prefix, p)] is None for p in missing)
    folder = s3_key(prefix, "/f/")
    listed, complete = sizes.get(folder) or (0, True)
    assert not complete and 0 < listed < 150, "the probe stopped before the end of the folder"
    # Keys past the last listed one were asked one by one; the others came from the listing.
    assert requests(metrics, "head") == len(late) + 1
    assert requests(metrics, "list") >= 1

    # A folder fully listed once is known: three keys are HEADs, not another listing.
    sizes.learn(folder, 150, complete=True)
    before = requests(metrics, "list")
    again = await source.lookup([s3_key(prefix, p) for p in early[:3]])
    assert all(v is not None for v in again.values())
    assert requests(metrics, "list") == before
