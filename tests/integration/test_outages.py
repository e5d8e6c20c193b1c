"""Dependency outages in the middle of a run: the worker pauses, keeps its group membership,
dead-letters nothing for the outage, and ends with the state of a clean run.

Each test runs its own S3 server or PostgreSQL server so it can stop and start it
without disturbing other tests.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest
from moto.server import ThreadedMotoServer
from prometheus_client import CollectorRegistry

from streamer.dev.stack import ensure_database, free_port, with_database
from streamer.gallery.worker import gallery_runner
from streamer.runtime.metrics import new_registry
from streamer.settings import Settings
from tests.integration.support import (
    Sender,
    drained,
    export_all,
    media,
    prepare,
    put_image,
    run_until_drained,
    stored_offsets,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SKUS = 120
PATHS = [f"/o/{i:02d}.jpg" for i in range(12)]


def events() -> list[Any]:
    return [
        media(
            f"O-{i:03d}",
            1,
            [
                {
                    "file_path": PATHS[(i + k) % len(PATHS)],
                    "position": k,
                    "roles": ["base"] if k == 0 else [],
                }
                for k in range(3)
            ],
            mode="REPLACE",
        )
        for i in range(N_SKUS)
    ]


def sample(metrics: CollectorRegistry, name: str, **labels: str) -> float:
    return metrics.get_sample_value(name, labels) or 0.0


async def clean_run_export(
    make_settings: Any, s3_client: Any, batch: list[Any]
) -> list[dict[str, Any]]:
    settings = make_settings()
    prepare(settings)
    for path in PATHS:
        put_image(s3_client, settings, path, path.encode() * 4)
    sender = Sender(settings)
    sender.send(batch)
    await run_until_drained(settings, sender.ends)
    return await export_all(settings)


async def run_with_outage(
    settings: Settings, batch: list[Any], dependency: str, stop_dep: Any, start_dep: Any
) -> tuple[CollectorRegistry, dict[str, float]]:
    """Start a worker, take the dependency away mid-run, bring it back, wait for the drain."""
    sender = Sender(settings)
    sender.send(batch)
    metrics = new_registry()
    worker = gallery_runner(settings, registry=metrics, install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    seen: dict[str, float] = {}
    try:

        async def progressed() -> bool:
            if task.done():
                task.result()
            return sum(max(0, o) for o in (await stored_offsets(settings)).values()) >= 20

        await wait_for(progressed, timeout_s=60, what="the first batches")
        assert not await drained(settings, sender.ends), "the run finished before the outage"
        await stop_dep()

        async def circuit_open() -> bool:
            if task.done():
                task.result()
            return sample(metrics, "streamer_circuit_state", dependency=dependency) == 2

        await wait_for(circuit_open, timeout_s=60, what=f"the {dependency} circuit to open")
        await wait_for(
            lambda: asyncio.sleep(0, result=sample(metrics, "streamer_paused_partitions") > 0),
            timeout_s=10,
            what="paused partitions",
        )
        seen["circuit_state_during"] = sample(
            metrics, "streamer_circuit_state", dependency=dependency
        )
        seen["paused_during"] = sample(metrics, "streamer_paused_partitions")
        seen["assigned_during"] = sample(metrics, "streamer_assigned_partitions")
        await start_dep()

        async def done() -> bool:
            if task.done():
                task.result()
            return await drained(settings, sender.ends)

        await wait_for(done, timeout_s=120, what="the drain after the outage")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    return metrics, seen


async def test_s3_outage_mid_run(make_settings, s3_client) -> None:
    batch = events()
    expected = await clean_run_export(make_settings, s3_client, batch)

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        settings = make_settings(
            s3_endpoint_url=f"http://127.0.0.1:{port}",
            batch_max_events=10,
            topic_partitions=2,
            head_timeout_s=1.0,
        )
        prepare(settings)
        own = boto3.client(
            "s3",
            endpoint_url=settings.s3.s3_endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="streamer-dev",
            aws_secret_access_key="streamer-dev",
        )
        own.create_bucket(Bucket=settings.s3.s3_bucket)
        for path in PATHS:
            put_image(own, settings, path, path.encode() * 4)

        async def stop_s3() -> None:
            await asyncio.to_thread(server.stop)

        async def start_s3() -> None:
            await asyncio.to_thread(server.start)

        metrics, seen = await run_with_outage(settings, batch, "s3", stop_s3, start_s3)
    finally:
        server.stop()

    assert seen["circuit_state_during"] == 2
    assert seen["paused_during"] == seen["assigned_during"] > 0
    assert sample(metrics, "streamer_circuit_state", dependency="s3") == 0
    assert sample(metrics, "streamer_paused_partitions") == 0
    assert sample(metrics, "streamer_retries_total", dependency="s3") > 0
    assert not any(
        s.value
        for m in metrics.collect()
        for s in m.samples
        if s.name == "streamer_dead_letters_total"
    )
    assert await export_all(settings) == expected


def _pg_ctl(pgdata: Path, *args: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    user = "pgserver" if os.geteuid() == 0 else None
    pgserver.pg_ctl(list(args), pgdata=pgdata, user=user)


async def test_postgres_restart_mid_run(make_settings, s3_client, tmp_path) -> None:
    batch = events()
    expected = await clean_run_export(make_settings, s3_client, batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    pgdata = tmp_path / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    admin = server.get_uri("postgres")
    try:
        await ensure_database(admin, "streamer")
        # postmaster.opts holds the socket-only options pgserver started it with.
        opts = shlex.split((pgdata / "postmaster.opts").read_text())[1:]
        if "-D" in opts:
            at = opts.index("-D")
            del opts[at : at + 2]
        start_opts = " ".join(shlex.quote(o) for o in opts)
        settings = make_settings(database_url=with_database(admin, "streamer"), batch_max_events=10)
        prepare(settings)
        for path in PATHS:
            put_image(s3_client, settings, path, path.encode() * 4)

        async def stop_pg() -> None:
            await asyncio.to_thread(_pg_ctl, pgdata, "-w", "-m", "immediate", "stop")

        async def start_pg() -> None:
            await asyncio.to_thread(
                _pg_ctl, pgdata, "-w", "-l", str(pgdata / "restart.log"), "-o", start_opts, "start"
            )

        metrics, seen = await run_with_outage(settings, batch, "postgres", stop_pg, start_pg)
        assert seen["circuit_state_during"] == 2
        assert seen["paused_during"] == seen["assigned_during"] > 0
        assert sample(metrics, "streamer_circuit_state", dependency="postgres") == 0
        assert sample(metrics, "streamer_retries_total", dependency="postgres") > 0
        assert not any(
            s.value
            for m in metrics.collect()
            for s in m.samples
            if s.name == "streamer_dead_letters_total"
        )
        assert await export_all(settings) == expected
        conn = await asyncpg.connect(settings.database.dsn)
        try:
            twice = await conn.fetchval(
                "SELECT count(*) FROM event_outcomes WHERE applications > 1"
            )
        finally:
            await conn.close()
        assert twice == 0
    finally:
        _pg_ctl(pgdata, "-w", "-m", "fast", "stop")
