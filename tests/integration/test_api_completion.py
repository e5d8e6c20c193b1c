"""A bulk taken in over HTTP is tracked to `complete`, with exactly one ImportCompleted,
while two gallery workers share its partitions."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamer.contract.codec import Codec
from streamer.gallery.worker import gallery_runner
from tests.integration.api_support import api_server
from tests.integration.support import prepare, put_image, read_topic, wait_for

pytestmark = pytest.mark.integration

ITEMS = 10_000
OBJECTS = 20
MISSING = (
    3  # items whose only image is not in S3: partial (dead-lettered), which completes them too
)


async def test_bulk_of_ten_thousand_items_completes_once(
    make_settings, tmp_path, s3_client
) -> None:
    settings = make_settings(etag_source="list", batch_max_events=2000, batch_max_wait_ms=100)
    prepare(settings)
    for n in range(OBJECTS):
        put_image(s3_client, settings, f"/bulk/img-{n}.jpg", f"image {n}".encode())
    items = [
        {
            "sku": f"BULK-{i:05d}",
            "images": [
                {
                    "file_path": f"/bulk/img-{i % OBJECTS}.jpg"
                    if i >= MISSING
                    else f"/bulk/missing-{i}.jpg",
                    "roles": ["base"],
                }
            ],
        }
        for i in range(ITEMS)
    ]
    stop = asyncio.Event()
    workers = [gallery_runner(settings, install_signal_handlers=False) for _ in range(2)]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        with api_server(settings, tmp_path) as server:
            async with server.client() as http:
                started = time.perf_counter()
                reply = await http.post(
                    "/v1/galleries/bulk", json={"request": {"request_id": "big", "items": items}}
                )
                took = time.perf_counter() - started
                assert reply.status_code == 202, reply.text[:500]
                bulk_uuid = reply.json()["bulk_uuid"]
                assert (
                    sum(i["status"] == "accepted" for i in reply.json()["request_items"]) == ITEMS
                )
                print(f"\n{ITEMS} items accepted in {took:.2f}s: {ITEMS / took:.0f} items/s")

                async def complete() -> bool:
                    for task in tasks:
                        if task.done():
                            task.result()
                    return bool((await http.get(f"/v1/bulks/{bulk_uuid}")).json()["complete"])

                await wait_for(complete, timeout_s=300, what="the bulk to complete")
                status = (await http.get(f"/v1/bulks/{bulk_uuid}")).json()
                assert status["counts"] == {
                    "pending": 0,
                    "written": ITEMS - MISSING,
                    "noop": 0,
                    "partial": MISSING,
                    "dead_lettered": 0,
                    "stale": 0,
                    "duplicate": 0,
                }
                assert status["processed"] == ITEMS and status["completed_at"]

                async def published() -> bool:
                    metrics = (await http.get("/metrics")).text
                    return "streamer_imports_completed_total 1.0" in metrics

                await wait_for(published, timeout_s=60, what="ImportCompleted acknowledged")
                metrics = (await http.get("/metrics")).text
                delay = [
                    line
                    for line in metrics.splitlines()
                    if line.startswith("streamer_import_completion_delay_seconds_sum")
                ]
                print(f"last item processed -> ImportCompleted acknowledged: {delay}")
                page = (
                    await http.get(f"/v1/bulks/{bulk_uuid}", params={"items": "true", "limit": 5})
                ).json()
                assert [i["outcome"] for i in page["items"]] == ["partial"] * 3 + ["written"] * 2
                assert page["items"][0]["outcome_reason"] == "object_missing"
                assert page["next_after"] == 5
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    assert all(w.stats.batches > 0 for w in workers), "both workers took part"
    completions = read_topic(settings, settings.topics.import_completed_topic, idle_s=2.0)
    assert len(completions) == 1
    record = Codec().decode(completions[0].value()).data
    assert completions[0].key().decode() == bulk_uuid
    assert str(record["bulk_uuid"]) == bulk_uuid and record["request_id"] == "big"
    assert record["accepted"] == ITEMS and record["items_total"] == ITEMS
    assert record["counts"]["written"] == ITEMS - MISSING
    assert record["counts"]["partial"] == MISSING
