"""The replicator end to end: the real gallery worker turns source events into GalleryUpdated,
the replicator copies the images of changed galleries into a second bucket.

Destinations: a second bucket on the stack's moto server (same endpoint, server-side copies),
or a moto server of the test's own (another endpoint, streamed copies).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from streamer.dev.stack import free_port
from streamer.storage.keys import s3_key
from tests.integration.replicate_support import (
    client,
    copies,
    gallery_chain,
    replica_state,
    replicate_all,
    sample,
    with_replica,
)
from tests.integration.support import dead_letters, fetch, media, prepare, product

pytestmark = pytest.mark.integration


def upload(s3: Any, settings: Any, path: str, body: bytes) -> str:
    s3.put_object(
        Bucket=settings.s3.s3_bucket,
        Key=s3_key(settings.s3.s3_prefix, path),
        Body=body,
        ContentType="image/jpeg",
        CacheControl="public, max-age=86400",
    )
    return hashlib.md5(body).hexdigest()


def images(*paths: str) -> list[dict[str, Any]]:
    return [{"file_path": p, "position": i} for i, p in enumerate(paths)]


async def test_lifecycle_copies_once_skips_identical_and_deletes_only_unused_images(
    make_settings, s3_client
) -> None:
    settings = with_replica(make_settings(topic_partitions=2))
    prepare(settings)
    etags = {
        p: upload(s3_client, settings, p, p.encode() * 50)
        for p in ("/r/a1.jpg", "/r/a2.jpg", "/r/b1.jpg", "/r/shared.jpg", "/r/c1.jpg")
    }
    await gallery_chain(
        settings,
        [
            media("A", 1, images("/r/a1.jpg", "/r/shared.jpg", "/r/a2.jpg"), mode="REPLACE"),
            media("B", 1, images("/r/b1.jpg", "/r/shared.jpg"), mode="REPLACE"),
            media("C", 1, images("/r/c1.jpg"), mode="REPLACE"),
        ],
    )

    # First sync: every distinct image copied once, server-side, headers carried over.
    first = await replicate_all(settings)
    assert copies(first) == 5 == sample(first, "streamer_replica_copies_total", mode="server_side")
    assert sample(first, "streamer_replica_copied_bytes_total", mode="server_side") == sum(
        len(p.encode() * 50) for p in etags
    )
    assert replica_state(settings) == {p: (e, "image/jpeg") for p, e in etags.items()}
    head = client(settings.s3.s3_endpoint_url).head_object(
        Bucket=settings.replica.replica_bucket, Key="cdn/images/r/a1.jpg"
    )
    assert head["CacheControl"] == "public, max-age=86400"

    # A re-sync by another group on the same destination: known replicated, no request at all.
    again = await replicate_all(
        settings.replace(replica_group_id=settings.replica.replica_group_id + "-2")
    )
    assert copies(again) == 0
    assert sample(again, "streamer_replica_images_total", result="recorded") == 6
    assert sample(again, "streamer_replica_requests_total", target="replica", operation="head") == 0

    # Records lost: the destination is checked by HEAD and found identical, still no copy.
    await fetch(settings, "TRUNCATE replica_skus, replica_refs, replica_objects")
    headed = await replicate_all(
        settings.replace(replica_group_id=settings.replica.replica_group_id + "-3")
    )
    assert copies(headed) == 0
    assert sample(headed, "streamer_replica_images_total", result="identical") == 6
    assert (
        sample(headed, "streamer_replica_requests_total", target="replica", operation="head") == 5
    )

    # One image replaced at the source: exactly that one is copied.
    etags["/r/a2.jpg"] = upload(s3_client, settings, "/r/a2.jpg", b"new bytes" * 20)
    await gallery_chain(
        settings, [media("A", 2, images("/r/a1.jpg", "/r/shared.jpg", "/r/a2.jpg"))]
    )
    replaced = await replicate_all(
        settings.replace(replica_group_id=settings.replica.replica_group_id + "-3")
    )
    assert copies(replaced) == 1
    assert replica_state(settings)["/r/a2.jpg"][0] == etags["/r/a2.jpg"]

    # The shared image leaves A's gallery: B still uses it, so it stays at the destination.
    group = settings.replace(replica_group_id=settings.replica.replica_group_id + "-3")
    await gallery_chain(settings, [media("A", 3, images("/r/a1.jpg", "/r/a2.jpg"), mode="REPLACE")])
    kept = await replicate_all(group)
    assert "/r/shared.jpg" in replica_state(settings)
    assert sample(kept, "streamer_replica_deletes_total") == 0

    # It leaves B's gallery too, and C is deleted: unused images are deleted at the destination.
    await gallery_chain(
        settings,
        [
            media("B", 2, images("/r/b1.jpg"), mode="REPLACE"),
            product("C", 2, op="DELETE"),
        ],
    )
    deleted = await replicate_all(group)
    assert sample(deleted, "streamer_replica_deletes_total") == 2
    state = replica_state(settings)
    assert set(state) == {"/r/a1.jpg", "/r/a2.jpg", "/r/b1.jpg"}
    assert all(state[p][0] == etags[p] for p in state)
    assert not dead_letters(settings)


@pytest.mark.parametrize(("limit", "expected"), [(1, {"/l/2.jpg"}), (0, set())])
async def test_image_limit_first_by_position_or_off(
    make_settings, s3_client, limit, expected
) -> None:
    settings = with_replica(make_settings(topic_partitions=1), replica_image_limit=limit)
    prepare(settings)
    for i in range(3):
        upload(s3_client, settings, f"/l/{i}.jpg", f"img{i}".encode())
    await gallery_chain(
        settings,
        [media("L", 1, [{"file_path": f"/l/{i}.jpg", "position": 2 - i} for i in (2, 1, 0)])],
    )
    registry = await replicate_all(settings)
    assert set(replica_state(settings)) == expected
    if limit == 0:
        assert sample(registry, "streamer_replica_events_total", outcome="off") == 1
    else:
        assert sample(registry, "streamer_replica_images_total", result="dropped_limit") == 2


async def test_oversized_and_missing_objects_are_dead_lettered_per_image(
    make_settings, s3_client
) -> None:
    settings = with_replica(make_settings(topic_partitions=1), replica_max_image_bytes=1000)
    prepare(settings)
    upload(s3_client, settings, "/f/ok.jpg", b"small")
    upload(s3_client, settings, "/f/big.jpg", b"x" * 5000)
    upload(s3_client, settings, "/f/gone.jpg", b"soon gone")
    await gallery_chain(settings, [media("F", 1, images("/f/ok.jpg", "/f/big.jpg", "/f/gone.jpg"))])
    s3_client.delete_object(
        Bucket=settings.s3.s3_bucket, Key=s3_key(settings.s3.s3_prefix, "/f/gone.jpg")
    )

    registry = await replicate_all(settings)
    assert set(replica_state(settings)) == {"/f/ok.jpg"}
    letters = dead_letters(settings)
    assert sorted(
        (d.reason, dict(d.details)["file_path"], d.job, d.detail("sku")) for d in letters
    ) == [
        ("object_missing", "/f/gone.jpg", "replicate", "F"),
        ("object_too_large", "/f/big.jpg", "replicate", "F"),
    ]
    assert all(d.topic == settings.topics.outcome_topic for d in letters)
    assert sample(registry, "streamer_replica_failures_total", reason="object_too_large") == 1
    assert sample(registry, "streamer_replica_failures_total", reason="object_missing") == 1
    assert (
        sample(registry, "streamer_replica_requests_total", target="replica", operation="copy") == 1
    )


async def test_undecodable_outcome_records_are_dead_lettered(make_settings) -> None:
    from tests.integration.support import Sender

    settings = with_replica(make_settings(topic_partitions=1))
    prepare(settings)
    sender = Sender(settings)
    sender.raw(settings.topics.outcome_topic, b"X", b"\xc3\x01garbage-not-avro")
    sender.flush()
    await replicate_all(settings)
    assert [d.reason for d in dead_letters(settings)] == ["unknown_schema"]


@pytest.fixture
def other_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()


async def test_another_endpoint_streams_copies_and_a_resync_copies_nothing(
    make_settings, s3_client, other_endpoint
) -> None:
    endpoint, _server = other_endpoint
    settings = with_replica(
        make_settings(topic_partitions=2), endpoint, replica_part_size_bytes=5 * 1024 * 1024
    )
    prepare(settings)
    small = upload(s3_client, settings, "/x/small.jpg", b"tiny image")
    big_body = bytes(range(256)) * (6 * 1024 * 4)  # 6 MiB: a two-part upload at the destination
    big = upload(s3_client, settings, "/x/big.jpg", big_body)
    await gallery_chain(settings, [media("X", 1, images("/x/small.jpg", "/x/big.jpg"))])

    first = await replicate_all(settings)
    assert sample(first, "streamer_replica_copies_total", mode="streamed") == 2
    assert (
        sample(first, "streamer_replica_copied_bytes_total", mode="streamed") == len(big_body) + 10
    )
    assert replica_state(settings) == {
        "/x/small.jpg": (small, "image/jpeg"),
        "/x/big.jpg": (big, "image/jpeg"),
    }
    dest = client(endpoint)
    stored = dest.head_object(Bucket=settings.replica.replica_bucket, Key="cdn/images/x/big.jpg")
    assert stored["ETag"].strip('"') != big and stored["ETag"].endswith('-2"'), (
        "multipart at the destination"
    )
    body = dest.get_object(Bucket=settings.replica.replica_bucket, Key="cdn/images/x/big.jpg")[
        "Body"
    ].read()
    assert body == big_body

    await fetch(settings, "TRUNCATE replica_skus, replica_refs, replica_objects")
    again = await replicate_all(
        settings.replace(replica_group_id=settings.replica.replica_group_id + "-2")
    )
    assert copies(again) == 0, "the recorded source ETag makes the multipart copy identical"
    assert sample(again, "streamer_replica_images_total", result="identical") == 2
