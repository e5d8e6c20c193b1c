"""One seeded chaos run: a catalog published while faults hit the workers and the parts,
then the final state held against the oracle.

Phase 1 publishes wave 1 (some objects still missing) while faults happen; once drained,
the late objects are uploaded, some objects overwritten, and the ``object_missing`` dead
letters replayed; phase 2 publishes wave 2 under new faults. All along, the bucket notifies
an SQS queue (moto serves SQS beside S3) of every put, which the object indexer
(``streamer objects consume``) keeps as the ``objects`` index; an overwrite sends a
``GalleryRecheck`` to every gallery still holding the old ETag. Everything random comes
from the seed, so ``--chaos-seed N`` replays the same catalog and the same fault
schedule (the exact interleaving with the workers still varies, which is the point:
the result must not).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.contract.codec import Codec
from streamer.contract.events import parse_event
from streamer.contract.publishing import EventPublisher
from streamer.dev.receiver import Receiver
from streamer.gallery.export import export_galleries
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.database import connect
from streamer.runtime.deadletters import DeadLetterRecord
from streamer.runtime.publisher import Publisher
from streamer.runtime.readback import read_messages
from streamer.runtime.replay import DeadLetterFilter, replay_dead_letters
from streamer.settings import Settings
from streamer.storage.keys import s3_key
from tests.chaos.catalog import Catalog, etag, generate
from tests.chaos.oracle import Obj, Oracle
from tests.chaos.parts import Broker, BrokerStore, CatalogS3, Postgres, Workers
from tests.integration.support import settings_env

__all__ = ["RunResult", "chaos_run"]


def _difference(want: dict[str, Any], got: dict[str, Any] | None) -> str:
    if got is None:
        return f"missing; expected {want}"
    parts = [
        f"{k}: expected {want[k]!r}, got {got.get(k)!r}"
        for k in ("version", "deleted")
        if want[k] != got.get(k)
    ]
    wanted = {i["file_path"]: i for i in want["images"]}
    found = {i["file_path"]: i for i in got["images"]}
    for path in sorted(set(wanted) | set(found)):
        if wanted.get(path) != found.get(path):
            parts.append(f"{path}: expected {wanted.get(path)}, got {found.get(path)}")
    return "; ".join(parts)


Log = Callable[[str], None]
# The broker is restarted between the phases, when nothing is being produced: Tansu 0.6 on
# S3 storage, stopped while producers write (SIGKILL or SIGINT alike), acknowledged records
# under the same offset twice and then served none of the partition (measured).
FAULTS = ("kill", "join", "leave", "s3", "postgres", "webhook")
# Workers kept alive per job during a phase: the gallery sync, the forwarder, the replicator,
# the object indexer (on the bucket's SQS queue: no consumer group, so joins and leaves
# churn no group of its own, only the queue's in-flight messages).
JOBS = {"consume": 2, "forward": 2, "replicate": 2, "objects": 2}
ARGV = {"objects": ("objects", "consume")}
# A group quiet this long has finished its rebalance (session timeout 6 s, two cooperative
# rounds); a leave waits up to LEAVE_WAIT_S for that, or is skipped.
SETTLE_S = 12.0
LEAVE_WAIT_S = 30.0
SECRET = "whsec_" + base64.b64encode(b"chaos campaign signing secret!!!").decode()


@dataclass
class RunResult:
    seed: int
    faults: list[str] = field(default_factory=list)
    events: int = 0
    crashes_in_commit: int = 0
    rechecks: int = 0  # GalleryRecheck events the gallery recorded
    lag_bumps: int = 0  # extra content changes of overwritten objects' images (old bytes stored)
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Run:
    def __init__(self, seed: int, workdir: Path, log: Log) -> None:
        self.seed = seed
        self.rng = random.Random(seed * 7919)
        self.workdir = workdir
        self.log = log
        self.result = RunResult(seed)
        self.catalog: Catalog = generate(seed)
        self.ends: dict[tuple[str, int], int] = {}
        self._seen_exits: dict[str, int] = {}
        self.outcomes: list[dict[str, Any]] = []

    # -- set-up -----------------------------------------------------------------------

    async def setup(self) -> None:
        self.store = BrokerStore(self.workdir)
        self.s3 = CatalogS3()
        self.s3.start()
        self.broker = Broker(self.workdir, self.store, f"tansu-{self.seed}")
        self.broker.start()
        self.receiver = Receiver(SECRET).up()
        self.pg = await asyncio.to_thread(Postgres, self.workdir)
        await self.pg.create()
        bucket = f"catalog-{self.seed}"
        s3 = self.s3.client()
        s3.create_bucket(Bucket=bucket)
        s3.create_bucket(Bucket=f"replica-{self.seed}")
        self.queue_url = self.s3.notify_queue(bucket)
        self.settings = Settings.load(
            None,
            kafka_bootstrap=self.broker.bootstrap,
            topic_partitions=6,
            fetch_wait_max_ms=250,  # every fetch lists S3 objects once Tansu restarts
            session_timeout_ms=6000,
            database_url=self.pg.dsn,
            s3_endpoint_url=self.s3.url,
            s3_bucket=bucket,
            s3_access_key_id="chaos",
            s3_secret_access_key="chaos",
            head_timeout_s=1.0,
            group_id=f"chaos-{self.seed}",
            etag_source="index",
            batch_max_events=25,
            batch_max_wait_ms=50,
            retry_initial_backoff_ms=50,
            retry_max_backoff_ms=500,
            circuit_reset_timeout_s=0.5,
            metrics_port=0,
            shutdown_grace_s=10,
            delivery_timeout_ms=60000,
            forward_group_id=f"chaos-{self.seed}-forward",
            webhook_url=self.receiver.url,
            webhook_secret=SECRET,
            webhook_timeout_s=2.0,
            webhook_rate_per_s=0,
            replica_group_id=f"chaos-{self.seed}-replicate",
            replica_bucket=f"replica-{self.seed}",
            replica_prefix="replica",
            objects_group_id=f"chaos-{self.seed}-objects",
            objects_sqs_url=self.queue_url,
            objects_sqs_wait_s=1,  # a leave waits out at most one long poll
            objects_sqs_visibility_s=10,  # a killed worker's messages come back soon
        )
        await migrate_all(self.pg.dsn)
        await asyncio.to_thread(create_topics, self.settings)
        self._upload(self.catalog.objects)
        env = settings_env(self.settings)
        env["STREAMER_WEBHOOK_SECRET"] = SECRET
        self.jobs = {
            command: Workers(self.workdir, env, command, ARGV.get(command, ())) for command in JOBS
        }
        self.publisher = Publisher(self.settings.kafka)
        self.publisher.start()
        self.events = EventPublisher(self.publisher, Codec(), self.settings.topics)

    def _upload(self, objects: dict[str, bytes]) -> None:
        s3 = self.s3.client()
        for path, body in objects.items():
            s3.put_object(
                Bucket=self.settings.s3.s3_bucket,
                Key=s3_key(self.settings.s3.s3_prefix, path),
                Body=body,
                ContentType="image/jpeg",
            )

    async def _overwrite_later(self, objects: dict[str, bytes], window_s: float) -> None:
        """``objects`` overwritten one by one at seeded times inside the window, each retried
        until S3 takes it (an S3 outage may be under way)."""
        times = sorted(self.rng.uniform(0.5, window_s) for _ in objects)
        started = time.monotonic()
        for at, (path, body) in zip(times, sorted(objects.items()), strict=True):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            while True:
                try:
                    await asyncio.to_thread(self._upload, {path: body})
                    break
                except Exception:
                    await asyncio.sleep(0.25)
        self.log(f"  overwrote {len(objects)} objects during the phase")

    async def teardown(self) -> None:
        for workers in self.jobs.values():
            workers.stop_all()
        self.receiver.down()
        with contextlib.suppress(Exception):
            self.publisher.close(timeout_s=5)
        self.broker.kill()
        await asyncio.to_thread(self.pg.destroy)
        for moto in (self.s3, self.store):
            if moto.up:
                moto.stop()

    # -- publishing and draining ------------------------------------------------------

    async def publish(self, events: list[dict[str, Any]], duration_s: float) -> None:
        """The wave in slices over ``duration_s``, so faults land while work is in progress."""
        slices = 10
        size = max(1, len(events) // slices + 1)
        for start in range(0, len(events), size):
            chunk = events[start : start + size]
            await asyncio.to_thread(self._send, chunk)
            await asyncio.sleep(duration_s / slices)

    def _send(self, events: list[dict[str, Any]]) -> None:
        for record in events:
            data = {k: v for k, v in record.items() if k != "type"}
            self.events.publish(parse_event(record["type"], data))
        self.publisher.flush(timeout_s=120)
        self._note_ends(self.publisher.end_offsets)

    def _note_ends(self, ends: dict[tuple[str, int], int]) -> None:
        for tp, end in ends.items():
            self.ends[tp] = max(self.ends.get(tp, 0), end)

    async def drained(self) -> bool:
        try:
            async with connect(self.pg.dsn, timeout_s=2) as conn:
                rows = await conn.fetch(
                    "SELECT topic, partition, next_offset FROM consumer_offsets"
                    " WHERE group_id = $1",
                    self.settings.gallery.group_id,
                )
        except Exception:
            return False
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        return all(stored.get(tp, -1) >= end for tp, end in self.ends.items())

    async def until_drained(self, timeout_s: float = 240) -> None:
        """The gallery drained; the object indexer past every notification, and the gallery
        past the re-checks it published; then the forwarder and replicator past every
        outcome."""
        deadline = time.monotonic() + timeout_s
        await self._gallery_drained(deadline, timeout_s)
        while time.monotonic() < deadline:
            self._keep_workers(min_workers=1, crash_points=False)
            with contextlib.suppress(Exception):
                if await asyncio.to_thread(self.s3.queued, self.queue_url) == 0:
                    break
            await asyncio.sleep(0.25)
        else:
            left = await asyncio.to_thread(self.s3.queued, self.queue_url)
            self.result.mismatches.append(
                f"object notifications not drained within {timeout_s:.0f}s: {left} in the queue"
            )
            raise TimeoutError(f"seed {self.seed}: object notifications not drained")
        # The re-checks the indexer published are on the media topic: the gallery past them.
        self._note_ends(await asyncio.to_thread(self._topic_ends, self.settings.topics.media_topic))
        await self._gallery_drained(deadline, timeout_s)
        outcome_ends = await asyncio.to_thread(self._outcome_ends)
        groups = (self.settings.forward.forward_group_id, self.settings.replica.replica_group_id)
        while time.monotonic() < deadline:
            self._keep_workers(min_workers=1, crash_points=False)
            if all([await self._group_at(g, outcome_ends) for g in groups]):
                return
            await asyncio.sleep(0.25)
        for group in groups:
            if short := await self._lagging(group, outcome_ends):
                self.result.mismatches.append(
                    f"{group} not drained within {timeout_s:.0f}s: {short}"
                )
        raise TimeoutError(f"seed {self.seed}: forwarder/replicator not drained")

    async def _gallery_drained(self, deadline: float, timeout_s: float) -> None:
        while time.monotonic() < deadline:
            self._keep_workers(min_workers=1, crash_points=False)
            if await self.drained():
                break
            await asyncio.sleep(0.25)
        else:
            self.result.mismatches.append(
                f"gallery not drained within {timeout_s:.0f}s:"
                f" {await self._lagging(self.settings.gallery.group_id, self.ends)}"
            )
            raise TimeoutError(f"seed {self.seed}: gallery not drained within {timeout_s:.0f}s")

    async def _lagging(self, group: str, ends: dict[tuple[str, int], int]) -> list[str]:
        """Partitions short of their end: where they stand, and which worker owns them."""
        async with connect(self.pg.dsn) as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset, epoch, owner FROM consumer_offsets"
                " WHERE group_id = $1",
                group,
            )
        at = {(r["topic"], r["partition"]): r for r in rows}
        return [
            f"{t}[{p}] at {at[(t, p)]['next_offset'] if (t, p) in at else None} of {end}"
            f" (epoch {at[(t, p)]['epoch'] if (t, p) in at else None},"
            f" owner {at[(t, p)]['owner'] if (t, p) in at else None})"
            for (t, p), end in sorted(ends.items())
            if (t, p) not in at or at[(t, p)]["next_offset"] < end
        ]

    def _topic_ends(self, topic: str) -> dict[tuple[str, int], int]:
        """Exact ends of a topic, from the messages themselves (not watermarks)."""
        ends: dict[tuple[str, int], int] = {}
        for msg in read_messages(self.settings.kafka, topic, timeout_s=120, strict=True):
            tp = (msg.topic() or "", msg.partition() or 0)
            ends[tp] = max(ends.get(tp, 0), (msg.offset() or 0) + 1)
        return ends

    def _outcome_ends(self) -> dict[tuple[str, int], int]:
        """Exact ends of the outcome topic, from the messages themselves (not watermarks)."""
        ends: dict[tuple[str, int], int] = {}
        self.outcomes = []
        for msg in read_messages(
            self.settings.kafka, self.settings.topics.outcome_topic, timeout_s=120, strict=True
        ):
            tp = (msg.topic() or "", msg.partition() or 0)
            ends[tp] = max(ends.get(tp, 0), (msg.offset() or 0) + 1)
            self.outcomes.append(Codec().decode(msg.value()).data)
        return ends

    async def _group_at(self, group: str, ends: dict[tuple[str, int], int]) -> bool:
        try:
            async with connect(self.pg.dsn, timeout_s=2) as conn:
                rows = await conn.fetch(
                    "SELECT topic, partition, next_offset FROM consumer_offsets"
                    " WHERE group_id = $1",
                    group,
                )
        except Exception:
            return False
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        return all(stored.get(tp, -1) >= end for tp, end in ends.items())

    # -- faults ------------------------------------------------------------------------

    def _keep_workers(self, *, min_workers: int, crash_points: bool) -> None:
        for command, workers in self.jobs.items():
            workers.alive()
            seen = self._seen_exits.get(command, 0)
            for name, code, how in workers.exits[seen:]:
                if how == "died":
                    self.result.crashes_in_commit += code == -9
                    self.log(
                        f"  {name} died (exit {code}): a crash point fired"
                        if code == -9
                        else f"  {name} died (exit {code})"
                    )
                    if code != -9:
                        self.result.mismatches.append(f"{name} died with exit {code}")
            self._seen_exits[command] = len(workers.exits)
            while len(workers.alive()) < min(min_workers, JOBS[command]):
                self._start_worker(command, crash_points)

    def _start_worker(self, command: str, crash_points: bool) -> str:
        points = "after_offsets:0.04,after_publish:0.04" if crash_points else ""
        name = self.jobs[command].add(crash_points=points, seed=self.rng.randint(0, 10**6))
        self.log(f"  {name} started (pid {self.jobs[command].procs[name].pid})")
        return name

    def schedule(self, window_s: float) -> list[tuple[float, str]]:
        count = self.rng.randint(3, 5)
        return sorted(
            (self.rng.uniform(0.5, window_s), self.rng.choice(FAULTS)) for _ in range(count)
        )

    async def fault(self, kind: str) -> None:
        rng = self.rng
        command = rng.choice(sorted(JOBS))
        workers = self.jobs[command]
        alive = workers.alive()
        settled = [n for n in alive if workers.age_s(n) > 5]  # past its imports
        if kind == "kill" and alive:
            name = rng.choice(alive)
            workers.kill(name)
            self.log(f"  fault: SIGKILL {name}")
        elif kind == "join":
            name = self._start_worker(command, crash_points=False)
            self.log(f"  fault: {name} joins")
        elif kind == "leave" and len(alive) > 1 and settled:
            if not await self._settled(workers):
                self.log(f"  fault: leave of a {command} worker skipped, its group never settled")
                return
            alive = workers.alive()
            settled = [n for n in alive if workers.age_s(n) > 5]
            if len(alive) < 2 or not settled:
                return
            name = rng.choice(settled)
            code = await workers.leave(name)
            self.log(f"  fault: {name} leaves (exit {code})")
            if code != 0:
                self.result.mismatches.append(f"{name} did not leave cleanly: exit {code}")
        elif kind == "s3":
            down = rng.uniform(1.0, 3.0)
            self.log(f"  fault: S3 down for {down:.1f}s")
            await asyncio.to_thread(self.s3.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.s3.start)
        elif kind == "postgres":
            down = rng.uniform(0.5, 2.0)
            self.log(f"  fault: PostgreSQL restart ({down:.1f}s down)")
            await asyncio.to_thread(self.pg.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.pg.start)
        elif kind == "webhook":
            down = rng.uniform(1.0, 3.0)
            self.log(f"  fault: webhook receiver down for {down:.1f}s")
            await asyncio.to_thread(self.receiver.down)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.receiver.up)
        elif kind == "broker":
            down = rng.uniform(0.5, 2.0)
            self.log(f"  fault: broker killed, back after {down:.1f}s")
            await asyncio.to_thread(self.broker.kill)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.broker.start)
        else:
            return
        self.result.faults.append(
            kind if kind in ("s3", "postgres", "webhook", "broker") else f"{kind}:{command}"
        )

    async def _settled(self, workers: Workers) -> bool:
        """Wait for the job's group to be quiet long enough to have finished rebalancing.

        Tansu 0.6.0 never completes a rebalance in which a member leaves (LeaveGroup)
        while another is joining: the joiner, and every later member, waits forever
        (reproduced with plain confluent-kafka clients, no streamer code:
        ``python -m tests.chaos.tansu_group_stall``). A real Kafka broker completes it,
        so a leave is injected only once the group is quiet.
        """
        deadline = time.monotonic() + LEAVE_WAIT_S
        while time.monotonic() < deadline:
            if workers.quiet_s() >= SETTLE_S:
                return True
            await asyncio.sleep(0.25)
        return False

    async def phase(self, name: str, work: Awaitable[None], window_s: float) -> None:
        """``work`` (publishing) with the fault schedule running beside it, then a drain."""
        self.log(f"{name}")
        started = time.monotonic()
        faults = self.schedule(window_s)

        async def inject() -> None:
            for at, kind in faults:
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                self._keep_workers(min_workers=2, crash_points=True)
                await self.fault(kind)

        async def keep() -> None:
            while True:
                self._keep_workers(min_workers=2, crash_points=True)
                await asyncio.sleep(0.25)

        keeper = asyncio.create_task(keep())
        try:
            await asyncio.gather(work, inject())
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self.until_drained()

    # -- the story -----------------------------------------------------------------------

    async def run(self) -> RunResult:
        started = time.monotonic()
        catalog = self.catalog
        self.result.events = len(catalog.wave1) + len(catalog.wave2)
        for command in JOBS:
            self._start_worker(command, crash_points=True)
            self._start_worker(command, crash_points=False)

        async def wave1() -> None:
            for sku, garbage in catalog.garbage:
                self.publisher.produce(self.settings.topics.media_topic, garbage, key=sku.encode())
            await self.publish(catalog.wave1, duration_s=12)

        await self.phase("phase 1: wave 1 under faults", wave1(), window_s=14)
        down = self.rng.uniform(0.5, 2.0)
        self.log(f"broker killed between the phases, back after {down:.1f}s")
        await asyncio.to_thread(self.broker.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.broker.start)
        self.result.faults.append("broker")
        self._upload(catalog.late)
        # Half the overwrites between the phases; the other half while wave 2 is applied and
        # faults happen, so the indexer's re-checks race the gallery's own writes.
        between = dict(sorted(catalog.overwritten.items())[::2])
        during = {p: b for p, b in catalog.overwritten.items() if p not in between}
        self._upload(between)
        replayed = await replay_dead_letters(
            self.settings.kafka,
            self.settings.database,
            self.settings.runtime.dlq_topic,
            DeadLetterFilter(reason="object_missing", job="gallery"),
        )
        self._note_ends(replayed.end_offsets)
        self.log(f"replayed {replayed.replayed} object_missing dead letters")

        async def wave2() -> None:
            await asyncio.gather(
                self.publish(catalog.wave2, 12), self._overwrite_later(during, window_s=10)
            )

        await self.phase("phase 2: wave 2 under faults", wave2(), 14)
        self.result.mismatches.extend(await self.compare(replayed.records))
        self.result.mismatches.extend(self.check_forwarded())
        self.result.mismatches.extend(await self.check_replica())
        self.result.mismatches.extend(await self.check_index())
        self.result.mismatches.extend(await self.check_overwritten())
        for workers in self.jobs.values():
            for name in workers.alive():
                code = await workers.leave(name)
                if code != 0:
                    self.result.mismatches.append(f"{name} did not stop cleanly: exit {code}")
        self.result.seconds = time.monotonic() - started
        return self.result

    async def compare(self, replayed: list[Any]) -> list[str]:
        """The final state exactly as the oracle has it; dead letters and applications
        within what the contract allows.

        What is exact: every gallery (images, ETags, metadata, roles, versions) and every
        image's ``content_version``. What has bounds instead: a SKU's product and media
        events travel on two topics, so a media event near the SKU's delete may be
        partial or stale depending on which arrives first, and a duplicate of a partial
        event is re-applied when it lands in a later batch but not in the same one; the
        state is the same either way, the dead letters and ``applications`` are not.

        One more bound, for the images of overwritten objects. The oracle lets every event
        after wave 1 see the new objects. In the run, half the objects are overwritten while
        wave 2 is applied, and with ``STREAMER_ETAG_SOURCE=index`` an event applied after an
        overwrite but before the indexer took its notification reads the old ETag from the
        index. An image such an event adds (``content_version`` 1) carries the old bytes
        until the re-check (asked by the indexer, or by the batch itself when it saw the
        newer index row) moves it to the new ones: 2 where the oracle has 1. The old bytes
        can even come back after a re-check stored the new ones: the indexer publishes its
        re-checks before it commits the index row, so a re-check applied before that commit
        (or before a crash rolled it back and the notification came back) leaves the index
        on the old ETag for the next event to read, and the next re-check moves the image
        forward again: new, old, new, two more. Each extra count is a real change of the
        stored bytes between the old and the new ETag, and how many there are depends on
        the timing of the indexer's commits, so for an overwritten object's image the bound
        is ``content_version`` at least the oracle's (never fewer changes than the bytes
        made). Every ETag is exact (the new one:
        the index source's cross-check between the batch and the indexer promises it; the
        ``list`` source has no such check, which is why the run reads from the index), and
        every other ``content_version`` is exact. Re-checks are each applied at most once
        (their ids derive from the change).
        """
        oracle = self.expected(replayed)
        problems: list[str] = []
        suspects: set[str] = set()
        actual = {g["sku"]: g async for g in export_galleries(self.pg.dsn)}
        for want in oracle.export():
            got = actual.pop(want["sku"], None)
            if got != want:
                problems.append(f"gallery {want['sku']}: {_difference(want, got)}")
                suspects.add(want["sku"])
        for sku, got in actual.items():
            problems.append(f"gallery {sku}: not expected, got {got}")
            suspects.add(sku)
        async with connect(self.pg.dsn) as conn:
            versions = {
                (r["sku"], r["file_path"]): r["content_version"]
                for r in await conn.fetch(
                    "SELECT sku, file_path, content_version FROM gallery_images"
                )
            }
            applications = {
                r["event_id"]: r["applications"]
                for r in await conn.fetch(
                    "SELECT event_id::text AS event_id, applications FROM event_outcomes"
                )
            }
        want_versions = oracle.content_versions()
        lagged = {
            k
            for k, n in versions.items()
            if k[1] in self.catalog.overwritten and k in want_versions and n > want_versions[k]
        }
        self.result.lag_bumps = sum(versions[k] - want_versions[k] for k in lagged)
        want_versions = {**want_versions, **{k: versions[k] for k in lagged}}
        if versions != want_versions:
            diff = {
                k: (want_versions.get(k), versions.get(k))
                for k in set(want_versions) | set(versions)
                if want_versions.get(k) != versions.get(k)
            }
            problems.append(f"content_version (expected, got): {dict(sorted(diff.items())[:10])}")
            suspects |= {sku for sku, _ in diff}
        deliveries = Counter(e["event_id"] for e in self.catalog.wave1 + self.catalog.wave2)
        deliveries.update(self._replayed_ids)
        # Ids the catalog never sent are the indexer's re-checks: derived from the change,
        # so a redelivered notification asks the same one, applied at most once.
        rechecks = set(applications) - set(deliveries)
        self.result.rechecks = len(rechecks)
        over = {
            e: n for e, n in applications.items() if n > (1 if e in rechecks else deliveries[e])
        }
        if over:
            problems.append(f"applied more often than delivered: {dict(list(over.items())[:10])}")
            suspects |= {self.sku_of[e] for e in over if e in self.sku_of}
        problems.extend(self.check_dead_letters(oracle, suspects))
        for sku in sorted(suspects)[:4]:
            problems.append(await self.explain(sku, oracle, applications))
        return problems

    def check_forwarded(self) -> list[str]:
        """Every outcome delivered at least once, each only ever under one webhook-id."""
        ids_of: dict[str, set[str]] = {}
        for webhook_id, event in self.receiver.accepted_events():
            ids_of.setdefault(str(event["data"]["event_id"]), set()).add(webhook_id)
        wanted = {str(o["event_id"]) for o in self.outcomes}
        problems = []
        missing = wanted - set(ids_of)
        if missing:
            problems.append(f"outcomes never delivered: {len(missing)} of {len(wanted)}")
        unstable = {e: ids for e, ids in ids_of.items() if len(ids) > 1}
        if unstable:
            problems.append(f"outcomes delivered under several webhook-ids: {unstable}")
        if any(not r.verified for r in self.receiver.snapshot()):
            problems.append("a delivery's signature did not verify")
        return problems

    async def check_replica(self, timeout_s: float = 60) -> list[str]:
        """The replica bucket holds exactly the live galleries' images, with their ETags
        (a removed image is deleted after its last gallery lets go: waited for)."""
        wanted: dict[str, str] = {}
        async for gallery in export_galleries(self.pg.dsn):
            for image in gallery["images"]:
                wanted[image["file_path"]] = image["etag"]
        s3 = self.s3.client()
        bucket = self.settings.replica.replica_bucket
        got: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = {}
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix="replica/"
            ):
                for obj in page.get("Contents", []):
                    got[obj["Key"].removeprefix("replica")] = obj["ETag"].strip('"')
            if got == wanted:
                return []
            await asyncio.sleep(1)
        missing = sorted(set(wanted) - set(got))
        extra = sorted(set(got) - set(wanted))
        stale = sorted(p for p in set(wanted) & set(got) if wanted[p] != got[p])
        return [f"replica: missing {missing[:5]}, extra {extra[:5]}, stale {stale[:5]}"]

    async def check_index(self) -> list[str]:
        """The ``objects`` index ends exactly as the bucket lists: every key with its ETag,
        and no other live row. No run deletes an object, so no row is marked deleted either
        (a deleted row would be a notification or a look-up the bucket never had)."""
        bucket = self.settings.s3.s3_bucket
        listed: dict[str, str] = {}
        for page in self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                listed[obj["Key"]] = obj["ETag"].strip('"')
        async with connect(self.pg.dsn) as conn:
            rows = await conn.fetch(
                "SELECT key, etag, deleted FROM objects WHERE bucket = $1", bucket
            )
        indexed = {r["key"]: r["etag"] for r in rows if not r["deleted"]}
        deleted = sorted(r["key"] for r in rows if r["deleted"])
        if indexed == listed and not deleted:
            return []
        missing = sorted(set(listed) - set(indexed))
        extra = sorted(set(indexed) - set(listed))
        stale = sorted(k for k in set(listed) & set(indexed) if listed[k] != indexed[k])
        return [
            f"object index vs bucket ({len(listed)} listed, {len(indexed)} indexed):"
            f" missing {missing[:5]}, extra {extra[:5]}, stale {stale[:5]},"
            f" marked deleted {deleted[:5]}"
        ]

    async def check_overwritten(self) -> list[str]:
        """Every gallery image of an overwritten object carries the new ETag, whether a wave-2
        event or the indexer's re-check brought it (the exact comparison says the same for
        the oracle's galleries; this names the failure plainly)."""
        new = {p: etag(b) for p, b in self.catalog.overwritten.items()}
        stale = [
            (g["sku"], i["file_path"])
            async for g in export_galleries(self.pg.dsn)
            for i in g["images"]
            if i["file_path"] in new and i["etag"] != new[i["file_path"]]
        ]
        return [f"images still on an overwritten object's old ETag: {stale[:10]}"] if stale else []

    def check_dead_letters(self, oracle: Oracle, suspects: set[str]) -> list[str]:
        letters: Counter[tuple[str, str]] = Counter()
        garbage = 0
        codec = Codec()
        others = [r for r in self.dead_letters() if r.job != "gallery"]
        problems_of_others = (
            [
                f"{len(others)} dead letters of other jobs: {sorted({(r.job, r.reason) for r in others})}"
            ]
            if others
            else []
        )
        for record in self.dead_letters():
            if record.job != "gallery":
                continue
            try:
                event_id = str(codec.decode(record.value).data["event_id"])
            except Exception:
                garbage += record.reason == "unknown_framing"
                continue
            letters[(event_id, record.reason)] += 1
        problems = problems_of_others
        if garbage != len(self.catalog.garbage):
            problems.append(
                f"{garbage} undecodable messages dead-lettered, sent {len(self.catalog.garbage)}"
            )
        unexplained = {k: n for k, n in letters.items() if oracle.reasons.get(k[0]) != k[1]}
        if unexplained:
            problems.append(f"dead letters the oracle cannot explain: {unexplained}")
            suspects |= {self.sku_of.get(e, "?") for e, _ in unexplained}
        for event_id, outcomes in oracle.outcomes.items():
            if outcomes[0] != "partial" or event_id in self._near_delete:
                continue
            if not letters[(event_id, oracle.reasons[event_id])]:
                problems.append(
                    f"no dead letter for partial event {event_id} ({oracle.reasons[event_id]})"
                )
                suspects.add(self.sku_of[event_id])
        return problems

    def dead_letters(self) -> list[Any]:
        """Every dead letter, each original message once (a redelivered batch may send twice)."""
        seen: dict[tuple[str, int, int], Any] = {}
        for msg in read_messages(
            self.settings.kafka, self.settings.runtime.dlq_topic, timeout_s=120, strict=True
        ):
            record = DeadLetterRecord.from_message(msg)
            seen.setdefault((record.topic, record.partition, record.offset), record)
        return list(seen.values())

    def expected(self, replayed: list[Any]) -> Oracle:
        catalog = self.catalog
        oracle = Oracle()
        self.sku_of = {e["event_id"]: e["sku"] for e in catalog.wave1 + catalog.wave2}
        # Media events of a SKU deleted later in the same wave: partial or stale by arrival.
        self._near_delete: set[str] = set()
        for wave in (catalog.wave1, catalog.wave2):
            deletes = {e["sku"]: e["version"] for e in wave if e.get("op") == "DELETE"}
            self._near_delete |= {
                e["event_id"] for e in wave if e["version"] < deletes.get(e["sku"], -1)
            }
        before = {p: Obj(etag(b), len(b)) for p, b in catalog.objects.items()}
        after = {
            **before,
            **{p: Obj(etag(b), len(b)) for p, b in {**catalog.late, **catalog.overwritten}.items()},
        }
        for event in catalog.wave1:
            oracle.apply(event, before)
        by_id = {e["event_id"]: e for e in catalog.wave1}
        codec = Codec()
        self._replayed_ids = []
        for record in replayed:  # in the order the replay sent them, per SKU the DLQ order
            event_id = str(codec.decode(record.value).data["event_id"])
            self._replayed_ids.append(event_id)
            oracle.apply(by_id[event_id], after)
        self.rechecked = oracle.recheck(after, catalog.overwritten)
        for event in catalog.wave2:
            oracle.apply(event, after)
        return oracle

    async def explain(self, sku: str, oracle: Oracle, applications: dict[str, int]) -> str:
        """The SKU's story: each event as published, the oracle's outcome and what was recorded."""
        async with connect(self.pg.dsn) as conn:
            rows = {
                r["event_id"]: (r["outcome"], r["reason"])
                for r in await conn.fetch(
                    "SELECT event_id::text AS event_id, outcome, reason FROM event_outcomes"
                    " WHERE sku = $1",
                    sku,
                )
            }
            product = await conn.fetchrow(
                "SELECT product_version, gallery_version, deleted FROM products WHERE sku = $1", sku
            )
        lines = [f"story of {sku} (stored {dict(product) if product else None}):"]
        for wave, events in (("1", self.catalog.wave1), ("2", self.catalog.wave2)):
            for event in events:
                if event["sku"] != sku:
                    continue
                images = [
                    (i["file_path"], i.get("position"), tuple(i.get("roles") or ()))
                    for i in event.get("images", [])
                ]
                lines.append(
                    f"  w{wave} {event['event_id'][:8]} v{event['version']} {event['type'][:5]}"
                    f" {event.get('mode') or event.get('op')} {images} -> oracle "
                    f"{oracle.outcomes.get(event['event_id'])}, recorded {rows.get(event['event_id'])}"
                    f" x{applications.get(event['event_id'], 0)}"
                )
        sent = {e["event_id"] for e in self.catalog.wave1 + self.catalog.wave2}
        for event_id, recorded in rows.items():
            if event_id not in sent:
                lines.append(
                    f"  re-check {event_id[:8]} recorded {recorded}"
                    f" x{applications.get(event_id, 0)}"
                )
        lines.append(f"  oracle re-checked: {[p for s, p in self.rechecked if s == sku]}")
        return "\n".join(lines)


async def chaos_run(seed: int, workdir: Path, log: Log = print) -> RunResult:
    run = Run(seed, workdir, log)
    await run.setup()
    try:
        return await run.run()
    except Exception as exc:
        run.result.mismatches.append(f"the run failed: {type(exc).__name__}: {exc}")
        return run.result
    finally:
        await run.teardown()
