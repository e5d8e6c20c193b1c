"""The object index against the broker, PostgreSQL and moto's S3 + SQS: kept exact through
puts, overwrites, deletes, duplicates and out-of-order delivery; an overwrite in S3 reaching
each gallery that uses the object as exactly one content change; a lost notification
repaired by ``objects reconcile``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import boto3
import pytest

from streamer.contract.codec import Codec
from streamer.gallery.worker import gallery_runner
from streamer.objectindex.records import ObjectChange, parse_notification
from streamer.objectindex.store import upsert_changes
from streamer.objects.reconcile import reconcile
from streamer.objects.worker import make_handler, objects_runner
from streamer.runtime.metrics import new_registry
from streamer.settings import Settings
from streamer.storage.keys import s3_key
from tests.integration.support import (
    Sender,
    counted,
    dead_letters,
    fetch,
    media,
    prepare,
    put_image,
    read_topic,
    replay,
    run_until_drained,
    wait_for,
)

pytestmark = pytest.mark.integration

T_OLD = datetime(2026, 1, 1, tzinfo=UTC)


def records(worker: Any) -> Counter[str]:
    """Notification records by result, as the worker's /metrics counts them."""
    return counted(worker, "streamer_object_notifications_total", "result")


def undecodable(worker: Any) -> int:
    return counted(worker, "streamer_dead_letters_total", "reason")["undecodable"]


def objects_settings(make_settings: Any, **overrides: Any) -> Settings:
    """A test's settings (its own notification topic and group too), with every topic made."""
    settings: Settings = make_settings(**overrides)
    prepare(settings)
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka.client_config())
    for f in admin.create_topics([NewTopic(settings.objects.objects_topic, 2, 1)]).values():
        f.result(timeout=30)
    return settings


def record(
    bucket: str, key: str, name: str, etag: str | None, seq: str | None, when: str
) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key.replace(" ", "+")}
    if etag is not None:
        obj.update(eTag=etag, size=len(etag))
    if seq is not None:
        obj["sequencer"] = seq
    return {
        "eventName": name,
        "eventTime": when,
        "s3": {"bucket": {"name": bucket}, "object": obj},
    }


def minio(rec: dict[str, Any]) -> bytes:
    bucket = rec["s3"]["bucket"]["name"]
    return json.dumps(
        {
            "EventName": "s3:" + rec["eventName"],
            "Key": f"{bucket}/{rec['s3']['object']['key']}",
            "Records": [rec],
        }
    ).encode()


async def index_rows(settings: Settings) -> dict[str, tuple[str | None, bool]]:
    rows = await fetch(
        settings,
        "SELECT key, etag, deleted FROM objects WHERE bucket = $1",
        settings.s3.s3_bucket,
    )
    return {r["key"]: (r["etag"], r["deleted"]) for r in rows}


async def test_index_from_kafka_is_exact_through_out_of_order_and_duplicate_delivery(
    make_settings,
) -> None:
    settings = objects_settings(make_settings)
    bucket, topic = settings.s3.s3_bucket, settings.objects.objects_topic
    sender = Sender(settings)
    t = "2026-11-24T02:00:0{}.000Z"
    created, removed = "ObjectCreated:Put", "ObjectRemoved:Delete"
    sequence = [
        record(bucket, "x/a b.jpg", created, "e1", "01", t.format(1)),
        record(bucket, "x/a b.jpg", created, "e3", "03", t.format(3)),
        record(bucket, "x/a b.jpg", created, "e2", "02", t.format(2)),  # late
        record(bucket, "x/a b.jpg", created, "e3", "03", t.format(3)),  # duplicate
        record(bucket, "x/gone.jpg", removed, None, "0B", t.format(5)),  # the delete first
        record(bucket, "x/gone.jpg", created, "g1", "0A", t.format(4)),
        record(bucket, "x/no-seq.jpg", created, "n2", None, t.format(6)),  # moto: no sequencer
        record(bucket, "x/no-seq.jpg", created, "n1", None, t.format(5)),
        record("another-bucket", "x/o.jpg", created, "o1", "01", t.format(1)),
    ]
    for rec in sequence:
        sender.raw(topic, f"{bucket}/{rec['s3']['object']['key']}".encode(), minio(rec))
    sender.raw(topic, b"k", json.dumps({"Event": "s3:TestEvent", "Service": "Amazon S3"}).encode())
    sender.raw(topic, b"k", b"{not json")
    sender.flush()

    worker = objects_runner(settings, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def consumed() -> bool:
            if task.done():
                task.result()
            return sum(records(worker).values()) + undecodable(worker) >= len(sequence) + 2

        await wait_for(consumed, timeout_s=60, what="the notifications to be consumed")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert await index_rows(settings) == {
        "x/a b.jpg": ("e3", False),
        "x/gone.jpg": (None, True),
        "x/no-seq.jpg": ("n2", False),
    }
    totals = records(worker)
    assert (totals["other_bucket"], totals["test_event"], undecodable(worker)) == (1, 1, 1)
    letters = dead_letters(settings)
    assert [letter.reason for letter in letters] == ["undecodable"]


class Recording:
    """An SQS client that remembers the bodies it received (to deliver them again)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.bodies: list[str] = []

    def receive_message(self, **kwargs: Any) -> Any:
        out = self.client.receive_message(**kwargs)
        self.bodies.extend(m["Body"] for m in out.get("Messages", []))
        return out

    def delete_message_batch(self, **kwargs: Any) -> Any:
        return self.client.delete_message_batch(**kwargs)

    def get_queue_attributes(self, **kwargs: Any) -> Any:
        return self.client.get_queue_attributes(**kwargs)


async def test_sqs_notifications_from_s3_keep_the_index_and_galleries_follow_an_overwrite(
    make_settings, stack
) -> None:
    tag = uuid.uuid4().hex[:8]
    bucket = f"objects-{tag}"
    creds = {
        "endpoint_url": stack.s3_endpoint_url,
        "region_name": "us-east-1",
        "aws_access_key_id": "streamer-dev",
        "aws_secret_access_key": "streamer-dev",
    }
    s3 = boto3.client("s3", **creds)
    sqs = boto3.client("sqs", **creds)
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"objects-{tag}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn["Attributes"]["QueueArn"],
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                }
            ]
        },
    )
    settings = objects_settings(
        make_settings,
        s3_bucket=bucket,
        objects_sqs_url=queue_url,
        objects_sqs_wait_s=1,
        etag_source="index",
    )
    prefix = settings.s3.s3_prefix
    key_a, key_b = s3_key(prefix, "/p/a.jpg"), s3_key(prefix, "/p/b.jpg")
    s3.put_object(Bucket=bucket, Key=key_a, Body=b"a-1")
    s3.put_object(Bucket=bucket, Key=key_b, Body=b"b-1")

    recording = Recording(sqs)
    source = objects_runner(
        settings, registry=new_registry(), sqs_client=recording, install_signal_handlers=False
    )
    gallery = gallery_runner(settings, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(source.run(stop)), asyncio.create_task(gallery.run(stop))]

    async def check(cond: Any) -> bool:
        for task in tasks:
            if task.done():
                task.result()
        return bool(await cond())

    try:
        Sender(settings).send(
            [
                media("SKU-1", 1, [{"file_path": "/p/a.jpg"}, {"file_path": "/p/b.jpg"}]),
                media("SKU-2", 1, [{"file_path": "/p/a.jpg"}]),
            ]
        )

        async def stored() -> list[Any]:
            return await fetch(
                settings,
                "SELECT sku, file_path, etag, content_version FROM gallery_images ORDER BY 1, 2",
            )

        md5 = {b: hashlib.md5(b).hexdigest() for b in (b"a-1", b"a-2", b"b-1")}
        await wait_for(
            lambda: check(lambda: _equal(stored, 3)), timeout_s=60, what="galleries stored"
        )
        await wait_for(
            lambda: check(
                lambda: _index_is(
                    settings, {key_a: (md5[b"a-1"], False), key_b: (md5[b"b-1"], False)}
                )
            ),
            timeout_s=60,
            what="the puts indexed",
        )
        first_put_a = next(
            b for b in recording.bodies if [c.key for c in parse_notification(b).changes] == [key_a]
        )

        # An overwrite in S3, with no upstream event: both galleries follow it.
        started = time.monotonic()
        s3.put_object(Bucket=bucket, Key=key_a, Body=b"a-2")

        async def followed() -> bool:
            rows = await stored()
            return all(r["etag"] == md5[b"a-2"] for r in rows if r["file_path"] == "/p/a.jpg")

        await wait_for(lambda: check(followed), timeout_s=60, what="galleries to follow S3")
        latency_s = time.monotonic() - started
        print(f"notification -> gallery written: {latency_s:.2f}s")

        # Duplicates and a late, older notification change nothing; a delete is indexed.
        overwrite = recording.bodies[-1]
        for body in (overwrite, overwrite, first_put_a):
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        s3.delete_object(Bucket=bucket, Key=key_b)
        await wait_for(
            lambda: check(
                lambda: _index_is(settings, {key_a: (md5[b"a-2"], False), key_b: (None, True)})
            ),
            timeout_s=60,
            what="the delete indexed",
        )

        async def missing_reported() -> bool:
            return any(letter.reason == "object_missing" for letter in dead_letters(settings))

        await wait_for(lambda: check(missing_reported), timeout_s=60, what="object_missing")

        async def queue_empty() -> bool:
            attrs = sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            return (
                attrs["ApproximateNumberOfMessages"] == "0"
                and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
            )

        await wait_for(lambda: check(queue_empty), timeout_s=60, what="the queue drained")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

    rows = await fetch(settings, "SELECT sku, file_path, etag, content_version FROM gallery_images")
    versions = {(r["sku"], r["file_path"]): (r["etag"], r["content_version"]) for r in rows}
    assert versions == {
        ("SKU-1", "/p/a.jpg"): (md5[b"a-2"], 2),
        ("SKU-1", "/p/b.jpg"): (md5[b"b-1"], 1),  # deleted in S3: reported, kept as today
        ("SKU-2", "/p/a.jpg"): (md5[b"a-2"], 2),
    }
    codec = Codec()
    updates = [
        codec.decode(m.value()).data for m in read_topic(settings, settings.topics.outcome_topic)
    ]
    after = Counter(
        u["sku"]
        for u in updates
        if u["content_changed"] == ["/p/a.jpg"]
        and any(i["etag"] == md5[b"a-2"] for i in u["images"])
    )
    assert after == {"SKU-1": 1, "SKU-2": 1}
    missing = [d for d in dead_letters(settings) if d.reason == "object_missing"]
    assert [d.detail("sku") for d in missing] == ["SKU-1"]
    assert records(source)["test_event"] == 1  # S3's own, when the queue was configured
    assert records(source)["not_newer"] >= 1  # the late first put (duplicates tie in time)
    reg = gallery.registry
    assert reg.get_sample_value("streamer_gallery_rechecks_total", {"result": "changed"}) == 2
    assert (
        reg.get_sample_value("streamer_gallery_rechecks_total", {"result": "object_missing"}) == 1
    )


async def _equal(stored: Any, n: int) -> bool:
    return len(await stored()) == n


async def _index_is(settings: Settings, expected: dict[str, tuple[str | None, bool]]) -> bool:
    return await index_rows(settings) == expected


async def test_reconcile_repairs_a_lost_notification_and_rechecks_its_galleries(
    make_settings, s3_client
) -> None:
    settings = objects_settings(make_settings)
    bucket, prefix = settings.s3.s3_bucket, settings.s3.s3_prefix
    key_a, key_b = s3_key(prefix, "/r/a.jpg"), s3_key(prefix, "/r/b.jpg")
    s3_client.put_object(Bucket=bucket, Key=key_a, Body=b"new bytes")  # its notification: lost
    old = T_OLD
    conn = await asyncpg.connect(settings.database.dsn)
    try:
        async with conn.transaction():
            await upsert_changes(
                conn,
                [
                    ObjectChange(bucket, key_a, False, "old-etag", 3, old),
                    ObjectChange(bucket, key_b, False, "b-etag", 3, old),  # deleted since
                ],
                source="notification",
            )
        await conn.execute(
            "INSERT INTO products (sku, product_version, gallery_version) VALUES ('SKU-R', -1, 1)"
        )
        await conn.execute(
            "INSERT INTO gallery_images (sku, file_path, etag, size_bytes) VALUES ('SKU-R', '/r/a.jpg', 'old-etag', 3)"
        )
    finally:
        await conn.close()

    report = await reconcile(settings, make_handler(settings))
    assert (report.missing, report.stale, report.gone) == ([], [key_a], [key_b])
    assert (report.repaired, report.rechecks) == (2, 1)
    assert await index_rows(settings) == {
        key_a: (hashlib.md5(b"new bytes").hexdigest(), False),
        key_b: (None, True),
    }
    codec = Codec()
    (recheck,) = [
        codec.decode_gallery_input(m.value())
        for m in read_topic(settings, settings.topics.media_topic)
    ]
    assert (recheck.sku, getattr(recheck, "file_paths", None)) == ("SKU-R", ("/r/a.jpg",))
    again = await reconcile(settings, make_handler(settings))
    assert (again.missing, again.stale, again.gone, again.rechecks) == ([], [], [], 0)
    assert again.listed == 1


async def test_index_etag_source_asks_s3_only_for_misses_and_records_them(
    make_settings, s3_client
) -> None:
    settings = objects_settings(make_settings, etag_source="index")
    bucket, prefix = settings.s3.s3_bucket, settings.s3.s3_prefix
    etag_a = put_image(s3_client, settings, "/i/a.jpg", b"a")
    etag_b = put_image(s3_client, settings, "/i/b.jpg", b"b")
    etag_c = put_image(s3_client, settings, "/i/c.jpg", b"c")  # in S3, deleted in the index
    conn = await asyncpg.connect(settings.database.dsn)
    try:
        async with conn.transaction():
            await upsert_changes(
                conn,
                [
                    ObjectChange(bucket, s3_key(prefix, "/i/a.jpg"), False, etag_a, 1, T_OLD),
                    ObjectChange(bucket, s3_key(prefix, "/i/c.jpg"), True, None, None, T_OLD),
                ],
                source="notification",
            )
    finally:
        await conn.close()
    sender = Sender(settings)
    images = [{"file_path": p} for p in ("/i/a.jpg", "/i/b.jpg", "/i/c.jpg")]
    sender.send([media("SKU-I", 1, images)])
    registry = new_registry()
    await run_until_drained(settings, sender.ends, registry=registry)

    def sample(name: str, labels: dict[str, str]) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    # b unknown, c's absence confirmed with S3 (which has it again): two HEADs.
    assert sample("streamer_s3_requests_total", {"operation": "head"}) == 2
    assert sample("streamer_object_index_lookups_total", {"result": "hit"}) == 1
    assert sample("streamer_object_index_lookups_total", {"result": "miss"}) == 2
    stored = await fetch(settings, "SELECT file_path, etag FROM gallery_images ORDER BY 1")
    assert [(r["file_path"], r["etag"]) for r in stored] == [
        ("/i/a.jpg", etag_a),
        ("/i/b.jpg", etag_b),
        ("/i/c.jpg", etag_c),
    ]
    assert dead_letters(settings) == []
    indexed = await fetch(
        settings,
        "SELECT key, etag, deleted, source FROM objects WHERE key <> $1 ORDER BY key",
        s3_key(prefix, "/i/a.jpg"),
    )
    assert [(r["etag"], r["deleted"], r["source"]) for r in indexed] == [
        (etag_b, False, "lookup"),
        (etag_c, False, "lookup"),  # recorded after the old delete: newer
    ]

    # A re-sync of what is stored: every key a hit, no S3 request at all.
    sender.send([media("SKU-I", 2, images)])
    again = new_registry()
    await run_until_drained(settings, sender.ends, registry=again)
    assert (again.get_sample_value("streamer_s3_requests_total", {"operation": "head"}) or 0) == 0
    assert (again.get_sample_value("streamer_s3_requests_total", {"operation": "list"}) or 0) == 0
    assert again.get_sample_value("streamer_object_index_lookups_total", {"result": "hit"}) == 3


async def test_a_replay_after_uploading_a_missing_object_does_not_trust_the_cached_absence(
    make_settings, s3_client
) -> None:
    """With the index source, a look-up's 404 is recorded in the index as a deleted row. The
    documented recovery (upload the objects, then ``dlq replay --reason object_missing``)
    must not depend on the upload's notification having reached the index first: no
    gallery holds the path, so that notification re-checks nothing, and the replayed event
    would be dead-lettered again and the image never stored. Found by the chaos campaign's
    replay of late objects."""
    settings = objects_settings(make_settings, etag_source="index")
    sender = Sender(settings)
    sender.send([media("SKU-L", 1, [{"file_path": "/l/late.jpg"}])])
    await run_until_drained(settings, sender.ends)
    assert [d.reason for d in dead_letters(settings)] == ["object_missing"]
    key = s3_key(settings.s3.s3_prefix, "/l/late.jpg")
    cached = await fetch(settings, "SELECT deleted, source FROM objects WHERE key = $1", key)
    assert [(r["deleted"], r["source"]) for r in cached] == [(True, "lookup")]

    etag = put_image(s3_client, settings, "/l/late.jpg", b"late bytes")  # no notification read
    replayed = await replay(settings, reason="object_missing")
    assert replayed.replayed == 1
    await run_until_drained(settings, {**sender.ends, **replayed.end_offsets})

    stored = await fetch(settings, "SELECT file_path, etag FROM gallery_images WHERE sku = 'SKU-L'")
    assert [(r["file_path"], r["etag"]) for r in stored] == [("/l/late.jpg", etag)]
    assert [d.reason for d in dead_letters(settings)] == ["object_missing"]  # not a second one
    indexed = await fetch(settings, "SELECT etag, deleted FROM objects WHERE key = $1", key)
    assert [(r["etag"], r["deleted"]) for r in indexed] == [(etag, False)]


async def test_the_sqs_source_waits_for_postgresql_at_start(make_settings, stack) -> None:
    """A worker started while PostgreSQL restarts waits for it, as the Kafka runner does,
    instead of exiting 1 (found by the chaos campaign: workers replaced during a restart
    died)."""
    from streamer.dev.stack import free_port

    sqs = boto3.client(
        "sqs",
        endpoint_url=stack.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="streamer-dev",
        aws_secret_access_key="streamer-dev",
    )
    url = sqs.create_queue(QueueName=f"objects-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    settings = make_settings(
        objects_sqs_url=url,
        objects_sqs_wait_s=0,
        database_url=f"postgresql://nobody:x@127.0.0.1:{free_port()}/none",
        circuit_reset_timeout_s=0.1,
    )
    source = objects_runner(settings, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    await asyncio.sleep(1.0)  # several attempts at 0.1 s apart
    assert not task.done(), task.exception() if task.done() else None
    stop.set()
    stats = await asyncio.wait_for(task, timeout=10)
    assert stats.batches == 0


class StaleThenIndexed:
    """An ETag source that answers with the bytes the object had, while the index moves on
    to the new ones (the objects job committing between this batch's look-up and its write,
    too early to see the gallery's row)."""

    def __init__(self, settings: Settings, key: str, old: str, new: str) -> None:
        from streamer.gallery.etags import make_etag_source

        self.settings, self.key, self.old, self.new = settings, key, old, new
        self.s3 = make_etag_source(settings.s3)
        self.fresh_calls = 0

    async def lookup(self, keys: Any, *, fresh: Any = ()) -> dict[str, Any]:
        from streamer.gallery.state import ObjectInfo

        if fresh:
            self.fresh_calls += 1
            return await self.s3.lookup(keys)
        conn = await asyncpg.connect(self.settings.database.dsn)
        try:
            async with conn.transaction():
                await upsert_changes(
                    conn,
                    [
                        ObjectChange(
                            self.settings.s3.s3_bucket,
                            self.key,
                            False,
                            self.new,
                            3,
                            datetime.now(UTC),
                        )
                    ],
                    source="notification",
                )
        finally:
            await conn.close()
        return {k: ObjectInfo(self.old, 3) for k in keys}

    async def close(self) -> None:
        await self.s3.close()


async def test_a_gallery_written_behind_the_index_rechecks_itself(make_settings, s3_client) -> None:
    settings = objects_settings(make_settings, etag_source="index")
    new = put_image(s3_client, settings, "/race/a.jpg", b"new")
    key = s3_key(settings.s3.s3_prefix, "/race/a.jpg")
    source = StaleThenIndexed(settings, key, "old-etag", new)
    sender = Sender(settings)
    sender.send([media("SKU-RACE", 1, [{"file_path": "/race/a.jpg"}])])
    worker = gallery_runner(
        settings, registry=new_registry(), install_signal_handlers=False, etags=source
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def caught_up() -> bool:
        if task.done():
            task.result()
        rows = await fetch(settings, "SELECT etag, content_version FROM gallery_images")
        return [(r["etag"], r["content_version"]) for r in rows] == [(new, 2)]

    try:
        await wait_for(caught_up, timeout_s=60, what="the gallery to re-check itself")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert source.fresh_calls == 1
    codec = Codec()
    updates = [
        codec.decode(m.value()).data for m in read_topic(settings, settings.topics.outcome_topic)
    ]
    assert [(u["content_changed"], u["images"][0]["etag"]) for u in updates] == [
        (["/race/a.jpg"], "old-etag"),
        (["/race/a.jpg"], new),
    ]
