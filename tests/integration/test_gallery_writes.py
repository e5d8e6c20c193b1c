"""The gallery's products rows are written compare-and-set: a SKU whose product and media
partitions belong to two workers is never overwritten with a state planned on an old read
(found by the chaos campaign: a delete committed by one worker, then resurrected by the
other's write)."""

from __future__ import annotations

import dataclasses

import pytest

from streamer.gallery.diff import diff
from streamer.gallery.repository import GalleryRepository, apply_diffs
from streamer.runtime.database import Database, connect
from streamer.runtime.errors import StateChanged
from tests.integration.support import fetch, prepare

pytestmark = pytest.mark.integration


async def test_a_row_changed_or_created_since_the_read_is_not_overwritten(make_settings) -> None:
    settings = make_settings()
    prepare(settings)
    async with Database(settings.database) as database:
        repository = GalleryRepository(database)
        first = (await repository.load_states(["S"]))["S"]
        assert first.row_version == 0
        created = dataclasses.replace(first, exists=True, gallery_version=5, name="one")
        async with connect(settings.database.dsn) as conn, conn.transaction():
            await apply_diffs(conn, [diff(first, created)])
        stored = (await repository.load_states(["S"]))["S"]
        assert (stored.row_version, stored.gallery_version) == (1, 5)

        # Another worker deletes the product after this batch read it.
        async with connect(settings.database.dsn) as conn:
            await conn.execute(
                "UPDATE products SET deleted = true, row_version = row_version + 1 WHERE sku = 'S'"
            )
        planned = dataclasses.replace(stored, gallery_version=6, name="two")
        async with connect(settings.database.dsn) as conn, conn.transaction():
            with pytest.raises(StateChanged) as info:
                await apply_diffs(conn, [diff(stored, planned)])
        assert info.value.keys == ["S"] and info.value.retriable  # the runner plans it again
        row = (await fetch(settings, "SELECT deleted, name, row_version FROM products"))[0]
        assert (row["deleted"], row["name"], row["row_version"]) == (True, "one", 2)

        # Planned on "no row yet" while another worker created it: not overwritten either.
        async with connect(settings.database.dsn) as conn:
            await conn.execute(
                "INSERT INTO products (sku, product_version, gallery_version) VALUES ('T', 1, 1)"
            )
        unknown = dataclasses.replace(first, sku="T")
        async with connect(settings.database.dsn) as conn, conn.transaction():
            with pytest.raises(StateChanged):
                await apply_diffs(conn, [diff(unknown, dataclasses.replace(unknown, exists=True))])

        # A version-only change (a re-sync) writes the watermark and no image row.
        fresh = (await repository.load_states(["S"]))["S"]
        resync = dataclasses.replace(fresh, gallery_version=9)
        async with connect(settings.database.dsn) as conn, conn.transaction():
            counts = await apply_diffs(conn, [diff(fresh, resync)])
        assert counts == {"insert": 0, "update": 0, "delete": 0, "product": 1}
        assert (await repository.load_states(["S"]))["S"].gallery_version == 9


async def test_a_payload_digest_holds_only_with_the_gallery_event_it_was_stored_with(
    make_settings,
) -> None:
    """The digest that lets a re-sync skip decoding is read back as written, and dropped once
    a writer unaware of it (an older streamer after a rollback) moved the gallery's event."""
    settings = make_settings()
    prepare(settings)
    digest = bytes(range(16))
    event_id = "6f1c1c9e-8a41-4a53-9a4e-0d5d2f3f6a01"
    async with Database(settings.database) as database:
        repository = GalleryRepository(database)
        empty = (await repository.load_states(["D"]))["D"]
        made = dataclasses.replace(
            empty, exists=True, gallery_version=3, gallery_event_id=event_id, gallery_digest=digest
        )
        async with connect(settings.database.dsn) as conn, conn.transaction():
            await apply_diffs(conn, [diff(empty, made)])
        assert (await repository.load_states(["D"]))["D"].gallery_digest == digest

        async with connect(settings.database.dsn) as conn:
            await conn.execute(
                "UPDATE products SET gallery_version = 4, "
                "gallery_event_id = '0b9a4c2e-1d7e-4f0a-8c55-3b2f6e1d9a77' WHERE sku = 'D'"
            )
        assert (await repository.load_states(["D"]))["D"].gallery_digest is None
