"""The consumer against real servers: ETag-checked gallery state, no-op skipping, ordering rules."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.support import (
    Sender,
    export_all,
    fetch,
    media,
    prepare,
    processed,
    product,
    put_image,
    read_topic,
    rows_written,
    run_until_drained,
)

pytestmark = [pytest.mark.integration, pytest.mark.smoke]


def img(path: str, **kw: Any) -> dict[str, Any]:
    return {"file_path": path, **kw}


async def rows(settings, sku: str) -> dict[str, Any]:
    result = await fetch(
        settings,
        "SELECT file_path, etag, label, position, roles, content_version, row_version "
        "FROM gallery_images WHERE sku = $1",
        sku,
    )
    return {r["file_path"]: dict(r) for r in result}


async def product_row(settings, sku: str) -> dict[str, Any] | None:
    result = await fetch(settings, "SELECT * FROM products WHERE sku = $1", sku)
    return dict(result[0]) if result else None


async def test_gallery_lifecycle_writes_only_what_changed(make_settings, s3_client) -> None:
    settings = make_settings()
    prepare(settings)
    etag_a = put_image(s3_client, settings, "/a/sku1-front.jpg", b"front-v1")
    put_image(s3_client, settings, "/a/sku1-back.jpg", b"back-v1")
    put_image(s3_client, settings, "/a/sku1-side.jpg", b"side-v1")
    sender = Sender(settings)

    first = [
        img("a/sku1-front.jpg", label="Front", position=1, roles=["base", "thumbnail"]),
        img("/a/sku1-back.jpg", label="Back", position=2, roles=["small_image"]),
    ]
    sender.send([product("SKU-1", 10, name="Shirt"), media("SKU-1", 10, first)])
    worker = await run_until_drained(settings, sender.ends)
    stored = await rows(settings, "SKU-1")
    assert stored["/a/sku1-front.jpg"]["etag"] == etag_a
    assert sorted(stored["/a/sku1-front.jpg"]["roles"]) == ["image", "thumbnail"]
    assert stored["/a/sku1-back.jpg"]["roles"] == ["small_image"]
    assert processed(worker)["written"] == 2

    # An identical re-publish (new event ids, same versions and content) writes nothing:
    # the versions were taken by the first events, so these are stale.
    before = await rows(settings, "SKU-1")
    product_before = await product_row(settings, "SKU-1")
    sender.send([product("SKU-1", 10, name="Shirt"), media("SKU-1", 10, first)])
    worker = await run_until_drained(settings, sender.ends)
    assert processed(worker)["stale"] == 2
    assert rows_written(worker) == 0
    assert await rows(settings, "SKU-1") == before
    assert (await product_row(settings, "SKU-1"))["row_version"] == product_before["row_version"]

    # New bytes under the same path: a content change, found by its ETag alone.
    new_etag = put_image(s3_client, settings, "/a/sku1-front.jpg", b"front-v2")
    sender.send([media("SKU-1", 11, first)])
    await run_until_drained(settings, sender.ends)
    stored = await rows(settings, "SKU-1")
    assert stored["/a/sku1-front.jpg"]["etag"] == new_etag
    assert stored["/a/sku1-front.jpg"]["content_version"] == 2
    assert stored["/a/sku1-back.jpg"]["row_version"] == before["/a/sku1-back.jpg"]["row_version"]
    outcomes = await fetch(
        settings, "SELECT count(*) AS n FROM event_outcomes WHERE outcome='written'"
    )
    assert outcomes[0]["n"] == 3

    # Metadata only: same ETag, new label -> a metadata update, content version unchanged.
    relabel = [
        img("/a/sku1-front.jpg", label="Front view", position=1, roles=["image", "thumbnail"]),
        first[1],
    ]
    sender.send([media("SKU-1", 12, relabel)])
    await run_until_drained(settings, sender.ends)
    stored = await rows(settings, "SKU-1")
    assert stored["/a/sku1-front.jpg"]["label"] == "Front view"
    assert stored["/a/sku1-front.jpg"]["content_version"] == 2

    # UPSERT keeps unlisted images; REPLACE removes them.
    sender.send([media("SKU-1", 13, [img("/a/sku1-side.jpg", position=3)])])
    await run_until_drained(settings, sender.ends)
    assert set(await rows(settings, "SKU-1")) == {
        "/a/sku1-front.jpg",
        "/a/sku1-back.jpg",
        "/a/sku1-side.jpg",
    }
    sender.send(
        [media("SKU-1", 14, [img("/a/sku1-side.jpg", position=1, roles=["base"])], mode="REPLACE")]
    )
    await run_until_drained(settings, sender.ends)
    stored = await rows(settings, "SKU-1")
    assert set(stored) == {"/a/sku1-side.jpg"}
    assert stored["/a/sku1-side.jpg"]["roles"] == ["image"]

    # A delete removes the gallery; an older media event after it changes nothing.
    # (Separate drains: the two topics have no order between them.)
    sender.send([product("SKU-1", 20, op="DELETE")])
    await run_until_drained(settings, sender.ends)
    sender.send([media("SKU-1", 15, first)])
    worker = await run_until_drained(settings, sender.ends)
    assert await rows(settings, "SKU-1") == {}
    assert (await product_row(settings, "SKU-1"))["deleted"] is True
    assert processed(worker)["stale"] == 1

    # One GalleryUpdated per change that touched the gallery; none for the no-ops.
    outcomes = [
        sender.codec.decode(m.value()) for m in read_topic(settings, settings.topics.outcome_topic)
    ]
    assert {o.type_name for o in outcomes} == {"GalleryUpdated"}
    content = [o.data for o in outcomes if "/a/sku1-front.jpg" in o.data["content_changed"]]
    assert len(content) == 2  # the first sync and the new bytes (v11)
    assert content[1]["images"][0]["etag"] == new_etag
    assert outcomes[-1].data["deleted"] is True
    assert len(outcomes) == 6  # sync, content, metadata, upsert, replace, delete

    final = await export_all(settings)
    assert final == [
        {
            "sku": "SKU-1",
            "version": 20,
            "deleted": True,
            "name": "Shirt",
            "enabled": True,
            "images": [],
        }
    ]


async def test_stale_replay_of_the_whole_topic_changes_nothing(make_settings, s3_client) -> None:
    settings = make_settings()
    prepare(settings)
    for i in range(3):
        put_image(s3_client, settings, f"/r/{i}.jpg", f"body-{i}".encode())
    sender = Sender(settings)
    events = []
    for sku in ("R-1", "R-2", "R-3"):
        events += [
            media(
                sku, 1, [img("/r/0.jpg", position=1, roles=["base"]), img("/r/1.jpg", position=2)]
            ),
            media(sku, 2, [img("/r/2.jpg", position=1, roles=["base"])], mode="REPLACE"),
            media(sku, 3, [img("/r/0.jpg", position=2, label="again")]),
        ]
    sender.send(events)
    await run_until_drained(settings, sender.ends)
    before = await export_all(settings)
    versions = await fetch(
        settings, "SELECT sku, file_path, row_version FROM gallery_images ORDER BY 1, 2"
    )

    # A new consumer group on the same database reads every event again from the start.
    replay = settings.replace(group_id=settings.gallery.group_id + "-replay")
    worker = await run_until_drained(replay, sender.ends)
    assert await export_all(settings) == before
    assert (
        await fetch(
            settings, "SELECT sku, file_path, row_version FROM gallery_images ORDER BY 1, 2"
        )
        == versions
    )
    assert rows_written(worker) == 0
    # Every event was applied once already: recognised by its event_id.
    assert processed(worker)["duplicate"] == 9

    # The same versions re-sent under new event ids are stale: older ones by version, the
    # latest because its version was taken by the first event that reached it.
    sender.send([e.model_copy(update={"event_id": str(uuid.uuid4())}) for e in events])
    worker = await run_until_drained(settings, sender.ends)
    assert await export_all(settings) == before
    assert rows_written(worker) == 0
    assert processed(worker)["stale"] == 9
