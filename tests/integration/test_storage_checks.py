"""A misconfigured bucket is a configuration error or an outage, never data.

At start every job and tool that reads S3 checks its bucket(s) with the credentials it will
use: a bucket that does not exist, a wrong key or secret, or a denying policy ends the
command with exit 1 and a message naming the setting, and nothing is consumed or written.
While running, the same conditions (the bucket deleted, the policy changed) open the
circuit and pause the partitions until they are repaired: nothing is dead-lettered, no
state is written, and afterwards the events apply as if nothing had happened.

The S3 server here is moto with IAM authentication on (``tests.integration.auth_s3``), so
signatures, keys and policies are really checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.gallery.worker import gallery_runner
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.settings import Settings
from streamer.storage.keys import s3_key
from tests.integration.auth_s3 import AuthS3
from tests.integration.replicate_support import replica_offsets, running_replicator, sample
from tests.integration.support import (
    Sender,
    drained,
    export_all,
    fetch,
    media,
    prepare,
    settings_env,
    stored_offsets,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATHS = [f"/s/{i:02d}.jpg" for i in range(6)]


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthS3]:
    server = AuthS3(tmp_path_factory.mktemp("auth-s3")).start()
    try:
        yield server
    finally:
        server.stop()


def seeded(auth_s3: AuthS3, settings: Settings, bucket: str | None = None) -> None:
    s3 = auth_s3.s3()
    bucket = bucket or settings.s3.s3_bucket
    for path in PATHS:
        s3.put_object(Bucket=bucket, Key=s3_key(settings.s3.s3_prefix, path), Body=path.encode())


def streamer(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *argv],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str], expected: str) -> str:
    """The one error line of a command that refused to start; shown in the test's output."""
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in done.stderr
    print(errors[0])
    return errors[0]


def galleries(n: int, version: int, paths: int) -> list[Any]:
    return [
        media(
            f"S-{i:02d}",
            version,
            [{"file_path": PATHS[(i + k) % len(PATHS)], "position": k} for k in range(paths)],
            mode="REPLACE",
        )
        for i in range(n)
    ]


async def nothing_consumed(settings: Settings) -> None:
    assert await fetch(settings, "SELECT * FROM consumer_offsets") == []
    assert await fetch(settings, "SELECT * FROM products") == []
    assert await fetch(settings, "SELECT * FROM event_outcomes") == []


# -- at start: a configuration error, nothing changed --------------------------------------


MISCONFIGURED = {
    "missing bucket": (
        "worker",
        {"s3_bucket": "no-such-bucket"},
        "S3 bucket 'no-such-bucket' does not exist (NoSuchBucket, HTTP 404): check "
        "STREAMER_S3_BUCKET (and STREAMER_S3_ENDPOINT_URL, which says where it is)",
    ),
    "wrong secret": (
        "worker",
        {"s3_secret_access_key": "not-the-secret"},
        "S3 refused the secret key (SignatureDoesNotMatch, HTTP 403): check "
        "STREAMER_S3_SECRET_ACCESS_KEY, the secret of STREAMER_S3_ACCESS_KEY_ID",
    ),
    "unknown key": (
        "worker",
        {"s3_access_key_id": "AKIAUNKNOWN000000000", "s3_secret_access_key": "x"},
        "S3 does not know the access key (InvalidAccessKeyId, HTTP 403): check "
        "STREAMER_S3_ACCESS_KEY_ID and STREAMER_S3_SECRET_ACCESS_KEY",
    ),
    "denied by policy": (
        "nobody",
        {},
        "(AccessDenied, HTTP 403): check the credentials (STREAMER_S3_ACCESS_KEY_ID and "
        "STREAMER_S3_SECRET_ACCESS_KEY, or the AWS credential chain when they are unset) and "
        "the bucket policy",
    ),
}


@pytest.mark.parametrize("case", list(MISCONFIGURED))
async def test_consume_refuses_to_start_and_consumes_nothing(make_settings, auth_s3, case) -> None:
    who, wrong, expected = MISCONFIGURED[case]
    bucket = auth_s3.new_bucket()
    settings = make_settings(**auth_s3.settings(who, s3_bucket=bucket), topic_partitions=1)
    prepare(settings)
    seeded(auth_s3, settings)
    Sender(settings).send(galleries(2, 1, 2))
    done = streamer(settings.replace(**wrong), "consume")
    refused(done, expected)
    await nothing_consumed(settings)


async def test_replicate_checks_the_source_and_the_replica_bucket(make_settings, auth_s3) -> None:
    source, replica = auth_s3.new_bucket(), auth_s3.new_bucket()
    settings = make_settings(
        **auth_s3.settings(s3_bucket=source),
        replica_bucket=replica,
        replica_group_id=f"r-{uuid.uuid4().hex[:8]}",
        topic_partitions=1,
    )
    prepare(settings)
    refused(
        streamer(settings.replace(s3_bucket="no-such-source"), "replicate"),
        "S3 bucket 'no-such-source' does not exist (NoSuchBucket, HTTP 404): check "
        "STREAMER_S3_BUCKET",
    )
    refused(
        streamer(settings.replace(replica_bucket="no-such-replica"), "replicate"),
        "the replica store bucket 'no-such-replica' does not exist (NoSuchBucket, HTTP 404): "
        "check STREAMER_REPLICA_BUCKET",
    )
    # Another endpoint (here the same server, reached as another store) with its own key.
    elsewhere = settings.replace(
        replica_endpoint_url=auth_s3.url,
        replica_access_key_id=auth_s3.worker["key"],
        replica_secret_access_key="not-the-secret",
    )
    refused(
        streamer(elsewhere, "replicate"),
        "the replica store refused the secret key (SignatureDoesNotMatch, HTTP 403): check "
        "STREAMER_REPLICA_SECRET_ACCESS_KEY, the secret of STREAMER_REPLICA_ACCESS_KEY_ID",
    )
    refused(
        streamer(settings.replace(replica_bucket="no-such-replica"), "replicate", "verify"),
        "check STREAMER_REPLICA_BUCKET",
    )
    assert await replica_offsets(settings) == {}
    assert await fetch(settings, "SELECT * FROM replica_objects") == []


async def test_reconcile_refuses_to_list_a_bucket_it_cannot_read(make_settings, auth_s3) -> None:
    bucket = auth_s3.new_bucket()
    settings = make_settings(**auth_s3.settings(s3_bucket=bucket))
    prepare(settings)
    seeded(auth_s3, settings)
    for wrong, expected in (
        ({"s3_bucket": "no-such-bucket"}, "check STREAMER_S3_BUCKET"),
        ({"s3_secret_access_key": "not-the-secret"}, "check STREAMER_S3_SECRET_ACCESS_KEY"),
    ):
        refused(streamer(settings.replace(**wrong), "objects", "reconcile"), expected)
    assert await fetch(settings, "SELECT * FROM objects") == []
    # The same command with the right settings does list and index the bucket.
    done = streamer(settings, "objects", "reconcile", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(await fetch(settings, "SELECT * FROM objects")) == len(PATHS)


async def test_the_sqs_source_refuses_a_queue_that_does_not_exist(make_settings, stack) -> None:
    settings = make_settings(
        objects_sqs_url=f"{stack.s3_endpoint_url}/123456789012/no-such-queue-{uuid.uuid4().hex[:6]}"
    )
    prepare(settings)
    refused(
        streamer(settings, "objects", "consume"),
        "does not exist (AWS.SimpleQueueService.NonExistentQueue): check STREAMER_OBJECTS_SQS_URL",
    )


# -- while running: an outage, nothing dead-lettered, nothing written ------------------------


def dead_lettered(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "streamer_dead_letters_total"
    )


async def paused_on(registry: CollectorRegistry, task: asyncio.Task[Any], dependency: str) -> None:
    async def open_and_paused() -> bool:
        if task.done():
            task.result()
        return (
            sample(registry, "streamer_circuit_state", dependency=dependency) == 2
            and sample(registry, "streamer_paused_partitions") > 0
        )

    await wait_for(open_and_paused, timeout_s=90, what=f"the {dependency} circuit to open")


@pytest.mark.parametrize("etag_source", ["head", "index"])
async def test_a_bucket_deleted_while_consuming_pauses_and_changes_nothing(
    make_settings, auth_s3, etag_source
) -> None:
    """Was: every image looked up as missing, each event dead-lettered ``object_missing``,
    and the REPLACE events dropped the images they did not list."""
    bucket = auth_s3.new_bucket()
    settings = make_settings(
        **auth_s3.settings(s3_bucket=bucket),
        etag_source=etag_source,
        topic_partitions=2,
        batch_max_events=20,
    )
    prepare(settings)
    seeded(auth_s3, settings)
    sender = Sender(settings)
    sender.send(galleries(10, 1, 3))
    registry = new_registry()
    worker = gallery_runner(settings, registry=registry, install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def first_wave() -> bool:
            if task.done():
                task.result()
            return await drained(settings, sender.ends)

        await wait_for(first_wave, timeout_s=90, what="the first wave")
        before = await export_all(settings)
        outcomes = await fetch(settings, "SELECT * FROM event_outcomes ORDER BY event_id")
        offsets = await stored_offsets(settings)
        auth_s3.delete_bucket(bucket)
        # New paths: the index knows none of them, so every job asks S3.
        second = [
            media(
                f"S-{i:02d}",
                2,
                [{"file_path": f"/s/new-{i:02d}.jpg", "position": 0}],
                mode="REPLACE",
            )
            for i in range(10)
        ]
        sender.send(second)
        await paused_on(registry, task, "s3")
        reasons = " ".join(worker.readiness().reasons)
        print(f"/readyz: {reasons}")
        assert "does not exist" in reasons and "STREAMER_S3_BUCKET" in reasons
        await asyncio.sleep(2)  # a few more attempts while paused: still nothing written
        assert dead_lettered(registry) == 0
        assert await export_all(settings) == before
        assert await fetch(settings, "SELECT * FROM event_outcomes ORDER BY event_id") == outcomes
        assert await stored_offsets(settings) == offsets

        s3 = auth_s3.s3()
        s3.create_bucket(Bucket=bucket)
        for i in range(10):
            key = s3_key(settings.s3.s3_prefix, f"/s/new-{i:02d}.jpg")
            s3.put_object(Bucket=bucket, Key=key, Body=b"new")

        async def second_wave() -> bool:
            if task.done():
                task.result()
            return await drained(settings, sender.ends)

        await wait_for(second_wave, timeout_s=120, what="the drain once the bucket is back")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    assert dead_lettered(registry) == 0
    after = {g["sku"]: [i["file_path"] for i in g["images"]] for g in await export_all(settings)}
    assert after == {f"S-{i:02d}": [f"/s/new-{i:02d}.jpg"] for i in range(10)}


async def test_a_policy_changed_while_consuming_pauses_until_it_is_restored(
    make_settings, auth_s3
) -> None:
    bucket = auth_s3.new_bucket()
    settings = make_settings(
        **auth_s3.settings(s3_bucket=bucket), etag_source="head", topic_partitions=2
    )
    prepare(settings)
    seeded(auth_s3, settings)
    sender = Sender(settings)
    registry = new_registry()
    worker = gallery_runner(settings, registry=registry, install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=sample(registry, "streamer_assigned_partitions") > 0),
            timeout_s=60,
            what="partitions assigned",
        )
        auth_s3.deny_worker()
        sender.send(galleries(6, 1, 2))
        await paused_on(registry, task, "s3")
        reasons = " ".join(worker.readiness().reasons)
        print(f"/readyz: {reasons}")
        assert "denied access" in reasons
        assert dead_lettered(registry) == 0
        assert await export_all(settings) == []
        auth_s3.allow_worker()

        async def done() -> bool:
            if task.done():
                task.result()
            return await drained(settings, sender.ends)

        await wait_for(done, timeout_s=120, what="the drain once the policy is restored")
    finally:
        with_deny_removed(auth_s3)
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    assert dead_lettered(registry) == 0
    assert len(await export_all(settings)) == 6


def with_deny_removed(auth_s3: AuthS3) -> None:
    """Leave the shared server as found, whatever the test did."""
    with contextlib.suppress(ClientError):  # already removed
        auth_s3.allow_worker()


def outcome(sku: str, path: str) -> dict[str, Any]:
    """A ``GalleryUpdated`` record of one image, as the gallery job publishes it."""
    return {
        "event_id": str(uuid.uuid4()),
        "sku": sku,
        "version": 1,
        "occurred_at": datetime.now(UTC),
        "deleted": False,
        "source_event_ids": [],
        "request_ids": [],
        "images": [
            {
                "file_path": path,
                "etag": "e",
                "size": 3,
                "content_type": "image/jpeg",
                "label": None,
                "position": 0,
                "disabled": False,
                "roles": [],
                "content_changed": True,
            }
        ],
        "removed": [],
        "content_changed": [path],
    }


async def test_the_replicator_pauses_while_a_bucket_is_gone(make_settings, auth_s3) -> None:
    """The source bucket deleted: was ``object_missing`` per image, dead-lettered. The
    replica bucket deleted: paused on the ``replica`` circuit, naming its setting."""
    source, replica = auth_s3.new_bucket(), auth_s3.new_bucket()
    settings = make_settings(
        **auth_s3.settings(s3_bucket=source),
        replica_bucket=replica,
        replica_prefix="cdn",
        replica_group_id=f"r-{uuid.uuid4().hex[:8]}",
        topic_partitions=1,
    )
    prepare(settings)
    seeded(auth_s3, settings)
    codec = Codec()
    topic = settings.topics.outcome_topic
    publisher = Publisher(settings.kafka)
    publisher.start()

    def publish(paths: list[str], prefix: str) -> dict[tuple[str, int], int]:
        for i, path in enumerate(paths):
            sku = f"{prefix}-{i}"
            publisher.produce(
                topic, codec.encode_outcome(outcome(sku, path), topic=topic), key=sku.encode()
            )
        publisher.flush()
        return dict(publisher.end_offsets)

    async def caught_up(ends: dict[tuple[str, int], int]) -> bool:
        stored = await replica_offsets(settings)
        return all(stored.get(tp, -1) >= end for tp, end in ends.items())

    registry = new_registry()
    try:
        async with running_replicator(settings, registry) as (worker, task):
            await wait_for(
                lambda: asyncio.sleep(
                    0, result=sample(registry, "streamer_assigned_partitions") > 0
                ),
                timeout_s=60,
                what="partitions assigned",
            )
            # New paths each time: a path the replicator's records vouch for costs no request.
            for gone, paths, dependency, setting in (
                (source, PATHS[:3], "s3", "STREAMER_S3_BUCKET"),
                (replica, PATHS[3:], "replica", "STREAMER_REPLICA_BUCKET"),
            ):
                auth_s3.delete_bucket(gone)
                ends = publish(paths, gone)
                await paused_on(registry, task, dependency)
                reasons = " ".join(worker.readiness().reasons)
                print(f"/readyz: {reasons}")
                assert setting in reasons
                assert dead_lettered(registry) == 0
                assert sample(registry, "streamer_replica_images_total", result="failed") == 0
                assert not await caught_up(ends)
                auth_s3.s3().create_bucket(Bucket=gone)
                if gone == source:
                    seeded(auth_s3, settings)
                await wait_for(
                    lambda ends=ends: caught_up(ends),
                    timeout_s=120,
                    what=f"the replicator to resume once {setting} is back",
                )
    finally:
        publisher.close()
    assert dead_lettered(registry) == 0
    copied = auth_s3.s3().list_objects_v2(Bucket=replica, Prefix="cdn/").get("Contents", [])
    # The second wave's three images (the first wave's copies went with the deleted bucket).
    assert sorted(o["Key"] for o in copied) == [f"cdn{p}" for p in PATHS[3:]]
