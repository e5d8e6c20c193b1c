"""Two workers in one group; one is killed with SIGKILL mid-run and the other takes over.

The result must be exactly the state one clean run produces, with no source
event applied twice (event_outcomes.applications stays 1 everywhere).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.support import (
    Sender,
    drained,
    export_all,
    fetch,
    media,
    prepare,
    product,
    put_image,
    run_until_drained,
    settings_env,
    stored_offsets,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def workload(seed: int, n_skus: int, n_events: int) -> list[Any]:
    rng = random.Random(seed)
    paths = [f"/k/{i:03d}.jpg" for i in range(40)]
    version = {f"K-{i:03d}": 0 for i in range(n_skus)}
    events = []
    for _ in range(n_events):
        sku = rng.choice(list(version))
        version[sku] += rng.randint(1, 3)
        if rng.random() < 0.1:
            events.append(product(sku, version[sku], name=f"name-{version[sku]}"))
            continue
        images = [
            {
                "file_path": p,
                "position": i,
                "label": f"l{rng.randint(0, 3)}",
                "roles": rng.sample(["base", "thumbnail", "small_image"], k=rng.randint(0, 2)),
            }
            for i, p in enumerate(rng.sample(paths, k=rng.randint(1, 4)))
        ]
        events.append(media(sku, version[sku], images, mode=rng.choice(["UPSERT", "REPLACE"])))
    return events


@pytest.mark.parametrize(
    "group_protocol",
    [
        "classic",
        # KIP-848: the broker assigns partitions and keeps the session (Apache Kafka 4.0+).
        pytest.param("consumer", marks=pytest.mark.kafka_only),
    ],
)
async def test_sigkill_mid_run_ends_with_the_state_of_a_clean_run(
    make_settings, s3_client, tmp_path, group_protocol
) -> None:
    common = {
        "etag_source": "list",
        "batch_max_events": 100,
        "topic_partitions": 6,
        "group_protocol": group_protocol,
    }
    killed_run = make_settings(**common)
    clean_run = make_settings(**common)
    prepare(killed_run)
    prepare(clean_run)
    for i in range(40):
        put_image(s3_client, killed_run, f"/k/{i:03d}.jpg", f"body-{i}".encode())
        put_image(s3_client, clean_run, f"/k/{i:03d}.jpg", f"body-{i}".encode())
    events = workload(seed=7, n_skus=60, n_events=3000)

    clean = Sender(clean_run)
    clean.send(events)
    await run_until_drained(clean_run, clean.ends, timeout_s=180)
    expected = await export_all(clean_run)

    sender = Sender(killed_run)
    sender.send(events)
    env = settings_env(killed_run)
    argv = [sys.executable, "-m", "streamer", "consume"]
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))  # noqa: ASYNC220
        for log in logs
    ]
    try:

        async def some_progress() -> bool:
            offsets = await stored_offsets(killed_run)
            return sum(max(0, o) for o in offsets.values()) >= 600

        await wait_for(some_progress, timeout_s=120, what="both workers to make progress")
        assert await drained(killed_run, sender.ends) is False, "run finished before the kill"
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=10)

        async def done() -> bool:
            assert workers[1].poll() is None, logs[1].read_text()[-3000:]
            return await drained(killed_run, sender.ends)

        await wait_for(done, timeout_s=180, what="the surviving worker to take over and drain")
        workers[1].send_signal(signal.SIGTERM)
        assert workers[1].wait(timeout=60) == 0
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert await export_all(killed_run) == expected
    twice = await fetch(
        killed_run, "SELECT count(*) AS n FROM event_outcomes WHERE applications > 1"
    )
    assert twice[0]["n"] == 0
    applied = await fetch(killed_run, "SELECT count(*) AS n FROM event_outcomes")
    assert applied[0]["n"] > 0
