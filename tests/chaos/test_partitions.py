"""Partitions between hosts, one scenario at a time, where the campaign can only count what
happened: here each is driven until what it must prove has been seen.

The zombie: a gallery worker cut off from every broker but not from PostgreSQL, in the
middle of a batch. The group gives its partitions to the other worker, whose claim bumps
their epochs; the zombie, which cannot hear of the rebalance, tries to commit the batch it
holds, and the epoch fence refuses it. Nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamer.dev.kafka import KafkaCluster
from streamer.dev.stack import ensure_database
from streamer.gallery.export import export_galleries
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.database import connect
from streamer.settings import Settings
from tests.chaos.hosted import HostedPostgres, kafka_cluster
from tests.chaos.network import Host, Network
from tests.chaos.parts import CatalogS3, Workers
from tests.chaos.tally import fences_in
from tests.integration.support import Sender, media, put_image, settings_env

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

SKUS = 1500


@dataclass
class Stage:
    net: Network
    brokers: list[Host]
    cluster: KafkaCluster
    pg: HostedPostgres
    s3: CatalogS3
    settings: Settings


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    with Network() as net:
        brokers = [net.host(f"kafka-{i}") for i in (1, 2, 3)]
        cluster = kafka_cluster(tmp_path / "kafka", brokers)
        pg = HostedPostgres(net.host("postgres"))
        s3 = CatalogS3(net.host("s3"))
        try:
            cluster.start()
            pg.start()
            s3.start()
            asyncio.run(ensure_database(pg.admin, "streamer"))
            settings = Settings.load(
                None,
                kafka_bootstrap=cluster.bootstrap(),
                topic_partitions=2,
                session_timeout_ms=6000,
                database_url=pg.dsn("streamer"),
                s3_endpoint_url=s3.url,
                s3_bucket="zombie",
                s3_access_key_id="chaos",
                s3_secret_access_key="chaos",
                group_id="zombie",
                batch_max_events=25,
                retry_initial_backoff_ms=50,
                retry_max_backoff_ms=500,
                circuit_reset_timeout_s=0.5,
                delivery_timeout_ms=8000,
                metrics_port=0,
            )
            s3.client().create_bucket(Bucket="zombie")
            asyncio.run(migrate_all(settings.database.dsn))
            create_topics(settings)
            yield Stage(net, brokers, cluster, pg, s3, settings)
        finally:
            for stop in (s3.stop, pg.destroy, cluster.kill):
                with contextlib.suppress(Exception):
                    stop()


async def _offsets(settings: Settings) -> dict[tuple[str, int], tuple[int, int, str]]:
    async with connect(settings.database.dsn, timeout_s=5) as conn:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset, epoch, owner FROM consumer_offsets"
            " WHERE group_id = $1",
            settings.gallery.group_id,
        )
    return {(r["topic"], r["partition"]): (r["next_offset"], r["epoch"], r["owner"]) for r in rows}


async def _until(what: str, timeout_s: float, check: Any) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


async def test_a_zombie_cut_off_from_the_brokers_is_refused_by_the_epoch_fence(
    stage: Stage, tmp_path: Path
) -> None:
    settings = stage.settings
    s3 = stage.s3.client()
    for sku in range(SKUS):
        put_image(s3, settings, f"/z/{sku}.jpg", f"image {sku}".encode())
    workers = Workers(tmp_path, settings_env(settings), "consume", place=stage.net.host)
    zombie, other = workers.add(), workers.add()
    pid = {name: workers.procs[name].pid for name in (zombie, other)}
    topics = {settings.topics.media_topic, settings.topics.product_topic}
    try:

        async def both_own() -> dict[str, set[tuple[str, int]]] | None:
            rows = await _offsets(settings)
            owned: dict[str, set[tuple[str, int]]] = {zombie: set(), other: set()}
            for tp, (_, _, owner) in rows.items():
                for name in owned:
                    if f"-{pid[name]}-" in owner:
                        owned[name].add(tp)
            full = len(rows) == 2 * len(topics)
            return owned if full and all(owned.values()) else None

        owned = await _until("both workers to own partitions", 120, both_own)
        media_tps = {tp for tp in owned[zombie] if tp[0] == settings.topics.media_topic}
        assert media_tps, f"the zombie owns no media partition: {owned}"

        sender = Sender(settings)
        events = [
            media(f"Z-{sku}", 1, [{"file_path": f"/z/{sku}.jpg", "roles": ["base"]}])
            for sku in range(SKUS)
        ]
        sender.send(events)
        ends = dict(sender.ends)

        async def zombie_mid_batch() -> bool:
            rows = await _offsets(settings)
            return any(0 < rows[tp][0] < ends.get(tp, 0) for tp in media_tps)

        await _until("the zombie to be part way through its partitions", 120, zombie_mid_batch)
        before = await _offsets(settings)
        host = workers.hosts[zombie]
        cuts = [stage.net.cut(host, b) for b in stage.brokers]
        try:

            async def fenced() -> bool:
                return fences_in(workers.log_path(zombie)) > 0

            await _until("the zombie's late commit to be refused by the fence", 180, fenced)
            taken = await _offsets(settings)
        finally:
            for cut in cuts:
                stage.net.restore(cut)
        assert sum(sum(c.dropped.values()) for c in cuts) > 0, "the cut dropped packets"
        # The other worker claimed the zombie's partitions: a new epoch, a new owner.
        for tp in media_tps:
            assert taken[tp][1] > before[tp][1], f"{tp}: epoch not bumped"
            assert f"-{pid[other]}-" in taken[tp][2], f"{tp}: owned by {taken[tp][2]}"

        async def drained() -> bool:
            rows = await _offsets(settings)
            return all(rows.get(tp, (-1, 0, ""))[0] >= end for tp, end in ends.items())

        await _until("the group to drain", 240, drained)
        assert zombie in workers.alive(), "the zombie survived its fencing and rejoined"
        async with connect(settings.database.dsn) as conn:
            applications = await conn.fetch(
                "SELECT event_id::text AS id, applications FROM event_outcomes"
            )
        assert len(applications) == SKUS
        twice = [r["id"] for r in applications if r["applications"] != 1]
        assert twice == [], f"applied more than once: {twice[:5]}"
        galleries = {g["sku"]: g async for g in export_galleries(settings.database.dsn)}
        assert len(galleries) == SKUS
        assert all(
            [i["file_path"] for i in galleries[f"Z-{sku}"]["images"]] == [f"/z/{sku}.jpg"]
            for sku in range(SKUS)
        )
    finally:
        workers.stop_all()
