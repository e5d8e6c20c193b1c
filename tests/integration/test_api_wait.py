"""A synchronous intake (`Prefer: wait=N`), `Idempotency-Key`, and completion relayed to the
topic of the deployment that took a bulk in, against real `streamer serve` processes."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from streamer.contract.codec import Codec
from streamer.gallery.worker import gallery_runner
from streamer.settings import Settings
from tests.integration.api_support import FULL_TOKEN, ApiServer, api_server, seed_payload
from tests.integration.support import fetch, prepare, put_image, read_topic, wait_for

pytestmark = pytest.mark.integration

WAITERS = 100


async def leading(server: ApiServer) -> bool:
    async with server.client(token=None) as http:
        metrics = (await http.get("/metrics")).text
    return "streamer_completion_relay_leader 1.0" in metrics


async def gauge(server: ApiServer, name: str) -> float:
    async with server.client(token=None) as http:
        metrics = (await http.get("/metrics")).text
    found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def connections_of(settings: Settings) -> int:
    rows = await fetch(
        settings,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    )
    return int(rows[0]["n"])


async def test_a_hundred_requests_wait_on_one_connection_while_another_process_relays(
    make_settings, tmp_path, s3_client
) -> None:
    settings = make_settings()
    prepare(settings)
    put_image(s3_client, settings, "/wait/a.jpg", b"an image")
    env = {
        "STREAMER_API_MAX_WAITERS": str(WAITERS),
        "STREAMER_API_MAX_WAIT_S": "900",
        "STREAMER_DATABASE_POOL_SIZE": "4",
    }
    stop = asyncio.Event()
    worker_task: asyncio.Task | None = None
    with api_server(settings, tmp_path) as leader:
        await wait_for(lambda: leading(leader), timeout_s=60, what="the first server to lead")
        with api_server(settings, tmp_path, extra_env=env) as server:
            assert not await leading(server), "the relay is led by the other process"
            async with httpx.AsyncClient(
                base_url=server.url,
                headers={"Authorization": f"Bearer {FULL_TOKEN}"},
                timeout=900,
                limits=httpx.Limits(max_connections=WAITERS + 10),
            ) as http:
                # Nothing consumes yet: a short wait ends in 202, with the tracking link.
                short = await http.post(
                    "/v1/galleries/bulk",
                    json=seed_payload("short", ["WAIT-SHORT"], "/wait/a.jpg"),
                    headers={"Prefer": "wait=1"},
                )
                assert short.status_code == 202, short.text
                assert short.headers["preference-applied"] == "wait=1"
                assert short.headers["location"] == f"/v1/bulks/{short.json()['bulk_uuid']}"

                requests = [
                    asyncio.create_task(
                        http.post(
                            "/v1/galleries/bulk",
                            json=seed_payload(f"w{i}", [f"WAIT-{i:03d}"], "/wait/a.jpg"),
                            headers={"Prefer": "respond-async, wait=3600"},
                        )
                    )
                    for i in range(WAITERS)
                ]

                async def all_waiting() -> bool:
                    return await gauge(server, "streamer_api_waiting_requests") == WAITERS

                await wait_for(all_waiting, timeout_s=120, what=f"{WAITERS} requests waiting")
                # One listening connection for all of them, beside the pool and the other
                # process's: far from one connection per waiter.
                assert await connections_of(settings) < 20
                refused = await http.post(
                    "/v1/galleries/bulk",
                    json=seed_payload("over", ["WAIT-OVER"], "/wait/a.jpg"),
                    headers={"Prefer": "wait=10"},
                )
                assert refused.status_code == 503, refused.text
                assert refused.json()["reason"] == "too_many_waiters"
                assert refused.headers["retry-after"] == "5"

                worker = gallery_runner(settings, install_signal_handlers=False)
                worker_task = asyncio.create_task(worker.run(stop))
                replies = await asyncio.wait_for(asyncio.gather(*requests), timeout=240)
            for reply in replies:
                assert reply.status_code == 200, reply.text
                # capped by STREAMER_API_MAX_WAIT_S
                assert reply.headers["preference-applied"] == "wait=900"
                body = reply.json()
                assert body["complete"] is True and body["errors"] is False
                (item,) = body["request_items"]
                assert (item["status"], item["outcome"]) == ("accepted", "written")
                assert body["counts"]["written"] == 1
    stop.set()
    if worker_task is not None:
        await asyncio.wait_for(worker_task, timeout=60)
    over = await fetch(settings, "SELECT count(*) AS n FROM bulks WHERE request_id = 'over'")
    assert over[0]["n"] == 0, "a refused waiter published nothing"


async def test_a_failed_item_makes_the_wait_answer_say_so(make_settings, tmp_path) -> None:
    settings = make_settings()
    prepare(settings)
    stop = asyncio.Event()
    worker = gallery_runner(settings, install_signal_handlers=False)
    task = asyncio.create_task(worker.run(stop))
    try:
        with api_server(settings, tmp_path) as server:
            async with server.client() as http:
                lines = (
                    '{"type": "media", "sku": "GONE-1", "images": [{"file_path": "no/such.jpg"}]}'
                )
                reply = await http.post(
                    "/v1/events",
                    content=lines,
                    headers={"Prefer": "wait=50", "Content-Type": "application/x-ndjson"},
                )
        assert reply.status_code == 200, reply.text
        (item,) = reply.json()["request_items"]
        assert (item["outcome"], item["outcome_reason"]) == ("partial", "object_missing")
        assert reply.json()["errors"] is True
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def test_idempotency_key_replays_the_first_answer_and_publishes_nothing_again(
    make_settings, tmp_path
) -> None:
    settings = make_settings()
    prepare(settings)
    with api_server(settings, tmp_path) as server:
        async with server.client() as http:
            payload = seed_payload("idem", ["IDEM-1", "IDEM-2"])
            key = {"Idempotency-Key": '"import-2026-12-03-001"'}
            first = await http.post("/v1/galleries/bulk", json=payload, headers=key)
            assert first.status_code == 202, first.text
            again = await http.post("/v1/galleries/bulk", json=payload, headers=key)
            assert again.status_code == 202, again.text
            assert again.json() == first.json()
            assert again.headers["idempotent-replayed"] == "true"
            other = await http.post(
                "/v1/galleries/bulk", json=seed_payload("idem", ["IDEM-3"]), headers=key
            )
            assert other.status_code == 422, other.text
            assert other.json()["reason"] == "idempotency_key_reused"
            # Keys are per route: the same key on the events route names another request.
            events = await http.post(
                "/v1/events", content='{"type": "product", "sku": "IDEM-4"}', headers=key
            )
            assert events.status_code == 202, events.text
            bad = await http.post(
                "/v1/galleries/bulk", json=payload, headers={"Idempotency-Key": "k" * 300}
            )
            assert bad.status_code == 422 and bad.json()["reason"] == "invalid_request"
    media = read_topic(settings, settings.topics.media_topic)
    assert sorted(m.key() for m in media) == [b"IDEM-1", b"IDEM-2"], "published once"
    rows = await fetch(settings, "SELECT route, key, state, created_at FROM idempotency_keys")
    assert sorted((r["route"], r["state"]) for r in rows) == [
        ("events", "done"),
        ("galleries_bulk", "done"),
    ]
    assert all(r["created_at"] is not None for r in rows)


async def test_import_completed_goes_to_the_topic_of_the_deployment_that_took_the_bulk_in(
    make_settings, tmp_path
) -> None:
    """Found with `make demo` beside a running `streamer serve`: the relay (one leader per
    database) sent the demo's ImportCompleted to the server's own topic."""
    ours = make_settings()
    prepare(ours)
    theirs = ours.replace(import_completed_topic=ours.topics.import_completed_topic + ".other")
    create_topics_only(theirs)
    stop = asyncio.Event()
    worker = gallery_runner(ours, install_signal_handlers=False)
    task = asyncio.create_task(worker.run(stop))
    try:
        with api_server(theirs, tmp_path) as leader:
            await wait_for(
                lambda: leading(leader), timeout_s=60, what="the other deployment to lead"
            )
            with api_server(ours, tmp_path) as server:
                async with server.client() as http:
                    reply = await http.post(
                        "/v1/events",
                        content='{"type": "product", "sku": "RELAYED", "name": "x"}',
                        headers={"Prefer": "wait=50"},
                    )
                    assert reply.status_code == 200, reply.text
                    bulk_uuid = reply.json()["bulk_uuid"]

                    async def published() -> bool:
                        rows = await fetch(
                            ours,
                            "SELECT published_at FROM import_completions WHERE bulk_uuid = $1",
                            bulk_uuid,
                        )
                        return bool(rows and rows[0]["published_at"])

                    await wait_for(published, timeout_s=60, what="the ImportCompleted")
                assert not await leading(server)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    mine = read_topic(ours, ours.topics.import_completed_topic)
    assert [str(Codec().decode(m.value()).data["bulk_uuid"]) for m in mine] == [bulk_uuid]
    assert read_topic(theirs, theirs.topics.import_completed_topic) == []


def create_topics_only(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka.client_config())
    topic = settings.topics.import_completed_topic
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
