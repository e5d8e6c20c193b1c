"""The replicator under faults: a destination outage mid-run, a worker killed with SIGKILL,
and ``replicate verify`` finding and repairing what went wrong at the destination."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from streamer.cli import app
from streamer.dev.stack import free_port
from streamer.runtime.metrics import new_registry
from tests.integration.replicate_support import (
    client,
    copies,
    gallery_chain,
    outcome_ends,
    replica_offsets,
    replica_state,
    replicate_all,
    replicated,
    running_replicator,
    sample,
    with_replica,
)
from tests.integration.support import (
    dead_letters,
    fetch,
    media,
    prepare,
    put_image,
    settings_env,
    wait_for,
)

N_SKUS = 80
PATHS = [f"/o/{i:03d}.jpg" for i in range(60)]


def catalog() -> list[Any]:
    """Galleries of three images over shared paths, then a second version dropping one."""
    first = [
        media(
            f"O-{i:03d}",
            1,
            [{"file_path": PATHS[(i + k) % len(PATHS)], "position": k} for k in range(3)],
            mode="REPLACE",
        )
        for i in range(N_SKUS)
    ]
    second = [
        media(
            f"O-{i:03d}",
            2,
            [{"file_path": PATHS[(i + k) % len(PATHS)], "position": k} for k in range(2)],
            mode="REPLACE",
        )
        for i in range(0, N_SKUS, 2)
    ]
    return first + second


def seed(s3: Any, settings: Any) -> None:
    for path in PATHS:
        put_image(s3, settings, path, path.encode() * 40)


async def clean_run(make_settings: Any, s3: Any, endpoint: str | None = None) -> dict[str, Any]:
    settings = with_replica(make_settings(topic_partitions=2), endpoint)
    prepare(settings)
    seed(s3, settings)
    await gallery_chain(settings, catalog())
    await replicate_all(settings)
    return replica_state(settings)


@pytest.mark.slow
@pytest.mark.integration
async def test_destination_outage_mid_run_ends_in_the_state_of_a_clean_run(
    make_settings, s3_client
) -> None:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        expected = await clean_run(make_settings, s3_client, endpoint)
        settings = with_replica(
            make_settings(topic_partitions=2, batch_max_events=5), endpoint, replica_timeout_s=1.0
        )
        prepare(settings)
        seed(s3_client, settings)
        await gallery_chain(settings, catalog())
        ends = outcome_ends(settings)
        metrics = new_registry()
        async with running_replicator(settings, metrics) as (_worker, task):

            async def progressed() -> bool:
                if task.done():
                    task.result()
                return copies(metrics) >= 10

            await wait_for(progressed, timeout_s=90, what="the first copies")
            assert not await replicated(settings, ends), "the run finished before the outage"
            await asyncio.to_thread(server.stop)

            async def circuit_open() -> bool:
                if task.done():
                    task.result()
                return sample(metrics, "streamer_circuit_state", dependency="replica") == 2

            await wait_for(circuit_open, timeout_s=90, what="the replica circuit to open")

            async def paused() -> bool:
                return sample(metrics, "streamer_paused_partitions") > 0

            await wait_for(paused, timeout_s=60, what="the partitions to pause")
            await asyncio.to_thread(server.start)

            async def done() -> bool:
                if task.done():
                    task.result()
                return await replicated(settings, ends)

            await wait_for(done, timeout_s=180, what="the drain after the outage")
        assert sample(metrics, "streamer_circuit_state", dependency="replica") == 0
        assert sample(metrics, "streamer_retries_total", dependency="replica") > 0
        assert not dead_letters(settings)
        assert replica_state(settings) == expected
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.integration
async def test_sigkill_mid_run_loses_nothing_and_copies_only_the_redelivered_batch_again(
    make_settings, s3_client, tmp_path
) -> None:
    expected = await clean_run(make_settings, s3_client)
    batch_max_events = 10
    settings = with_replica(make_settings(topic_partitions=2, batch_max_events=batch_max_events))
    prepare(settings)
    seed(s3_client, settings)
    dest = client(settings.s3.s3_endpoint_url)
    bucket = settings.replica.replica_bucket
    # Every PUT or COPY leaves a version: the copies of both workers are counted at the destination.
    dest.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    await gallery_chain(settings, catalog())
    ends = outcome_ends(settings)
    env = settings_env(settings)
    log = tmp_path / "replicator.log"
    argv = [sys.executable, "-m", "streamer", "replicate"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))  # noqa: ASYNC220
    second = None
    try:

        async def some_progress() -> bool:
            assert first.poll() is None, log.read_text()[-3000:]
            return sum(max(0, o) for o in (await replica_offsets(settings)).values()) >= 30

        await wait_for(some_progress, timeout_s=120, what="the replicator to make progress")
        assert not await replicated(settings, ends), "the run finished before the kill"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))  # noqa: ASYNC220

        async def done() -> bool:
            assert second is not None and second.poll() is None, log.read_text()[-3000:]
            return await replicated(settings, ends)

        await wait_for(done, timeout_s=180, what="a new replicator to take over and drain")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    assert replica_state(settings) == expected
    versions = [
        v
        for page in dest.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for v in page.get("Versions", [])
    ]
    copied_twice = len(versions) - len({v["Key"] for v in versions})
    # At most one batch (its SKUs' three images each) was in flight when the worker died.
    assert 0 <= copied_twice <= batch_max_events * 3
    assert not dead_letters(settings)


@pytest.mark.integration
async def test_verify_reports_missing_stale_and_extra_and_repair_fixes_them(
    make_settings, s3_client, monkeypatch
) -> None:
    settings = with_replica(make_settings(topic_partitions=1))
    prepare(settings)
    for path in ("/v/1.jpg", "/v/2.jpg", "/v/3.jpg"):
        put_image(s3_client, settings, path, path.encode() * 10)
    await gallery_chain(
        settings, [media("V", 1, [{"file_path": f"/v/{i}.jpg"} for i in (1, 2, 3)])]
    )
    await replicate_all(settings)
    good = replica_state(settings)
    dest, bucket = client(settings.s3.s3_endpoint_url), settings.replica.replica_bucket
    dest.delete_object(Bucket=bucket, Key="cdn/images/v/1.jpg")
    dest.put_object(Bucket=bucket, Key="cdn/images/v/2.jpg", Body=b"tampered")
    dest.put_object(Bucket=bucket, Key="cdn/images/v/extra.jpg", Body=b"nobody uses me")
    for key in list(os.environ):
        if key.startswith("STREAMER_"):
            monkeypatch.delenv(key)
    env = settings_env(settings)

    async def verify(*args: str) -> Any:
        argv = ["replicate", "verify", "--json", *args]
        result = await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)
        assert result.stdout, result.output
        return result.exit_code, json.loads(result.stdout)

    code, report = await verify()
    assert code == 1
    assert (
        report["expected"],
        report["ok"],
        report["missing"],
        report["stale"],
        report["extra"],
    ) == (3, 1, 1, 1, 1)
    assert report["paths"] == {
        "missing": ["/v/1.jpg"],
        "stale": ["/v/2.jpg"],
        "extra": ["/v/extra.jpg"],
    }
    code, only = await verify("--prefix", "/v/1")
    assert (only["expected"], only["missing"], only["stale"], only["extra"]) == (1, 1, 0, 0)

    code, repaired = await verify("--repair")
    assert code == 0 and (repaired["copied"], repaired["deleted"]) == (2, 1)
    assert replica_state(settings) == good
    code, clean = await verify()
    assert (
        code == 0 and clean["ok"] == 3 and clean["missing"] == clean["stale"] == clean["extra"] == 0
    )


def churn() -> list[Any]:
    """Galleries that share few paths and keep dropping and re-adding them."""
    paths = [f"/c/{i}.jpg" for i in range(8)]
    out = []
    for version, offsets in ((1, (0, 1)), (2, (2,)), (3, (0, 3)), (4, (1, 3))):
        for i in range(40):
            chosen = [paths[(i + k) % len(paths)] for k in offsets]
            out.append(
                media(
                    f"C-{i:02d}",
                    version,
                    [{"file_path": p, "position": n} for n, p in enumerate(chosen)],
                    mode="REPLACE",
                )
            )
    return out


@pytest.mark.slow
@pytest.mark.integration
async def test_two_workers_sharing_paths_end_with_exactly_the_galleries_images(
    make_settings, s3_client
) -> None:
    settings = with_replica(make_settings(topic_partitions=4, batch_max_events=5))
    prepare(settings)
    for i in range(8):
        put_image(s3_client, settings, f"/c/{i}.jpg", f"shared {i}".encode() * 30)
    await gallery_chain(settings, churn())
    ends = outcome_ends(settings)
    async with (
        running_replicator(settings) as (_one, first),
        running_replicator(settings) as (_two, second),
    ):

        async def done() -> bool:
            for task in (first, second):
                if task.done():
                    task.result()
            return await replicated(settings, ends)

        await wait_for(done, timeout_s=180, what="two replicators to drain the outcome topic")
    final = {f"/c/{(i + k) % 8}.jpg" for i in range(40) for k in (1, 3)}
    assert set(replica_state(settings)) == final
    refs = await fetch(settings, "SELECT count(DISTINCT file_path) AS n FROM replica_refs")
    assert refs[0]["n"] == len(final)


@pytest.mark.integration
async def test_a_copy_of_a_batch_that_never_committed_is_deleted_when_its_gallery_moved_on(
    make_settings, s3_client, tmp_path
) -> None:
    """Regression (chaos campaign, seed 6): a replicator copied an image and died before its
    COMMIT; the gallery's next version, which no longer has the image, arrived in the same
    batch as the redelivered one, so only the newer record was applied and the copy stayed
    at the destination with no reference, for good."""
    settings = with_replica(make_settings(topic_partitions=1))
    prepare(settings)
    for path in ("/k/kept.jpg", "/k/dropped.jpg"):
        put_image(s3_client, settings, path, path.encode() * 40)
    images = [{"file_path": "/k/kept.jpg", "position": 0}]
    await gallery_chain(
        settings,
        [
            media(
                "K-1", 1, [*images, {"file_path": "/k/dropped.jpg", "position": 1}], mode="REPLACE"
            )
        ],
    )
    env = settings_env(settings)
    env["STREAMER_TEST_CRASH_POINTS"] = "after_offsets:1.0"
    log = tmp_path / "replicator.log"
    crashed = subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-m", "streamer", "--arm-test-crash-points", "replicate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert set(replica_state(settings)) == {"/k/kept.jpg", "/k/dropped.jpg"}, "copied, uncommitted"

    await gallery_chain(settings, [media("K-1", 2, images, mode="REPLACE")])
    await replicate_all(settings)
    assert set(replica_state(settings)) == {"/k/kept.jpg"}
