"""One seeded chaos run: a catalog published while faults hit the workers and the parts,
then the final state held against the oracle.

Phase 1 publishes wave 1 (some objects still missing) while faults happen; once drained,
the late objects are uploaded and some objects overwritten (and the indexer and the
galleries have taken them), the harness reads the whole dead-letter topic with a consumer
of its own, and the ``object_missing`` dead letters are replayed (what the replay sends
must be what the topic holds); phase 2 publishes wave 2 under new faults while the other
overwrites land. Every fault and crash point that fired is tallied (``tally.py``). All along, the bucket notifies
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
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.contract.codec import Codec
from streamer.contract.events import parse_event
from streamer.contract.publishing import topic_for
from streamer.dev.stack import ensure_database
from streamer.gallery.export import export_galleries
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.database import connect
from streamer.runtime.errors import DeliveryError
from streamer.runtime.publisher import Publisher
from streamer.runtime.replay import DeadLetterFilter, replay_dead_letters
from streamer.settings import Settings
from streamer.storage.keys import s3_key
from tests.chaos.catalog import Catalog, etag, generate
from tests.chaos.faultproxy import FaultProxy, Link
from tests.chaos.hosted import HostedPostgres, kafka_cluster, serve_receiver
from tests.chaos.network import Fault, Host, Network
from tests.chaos.oracle import Obj, Oracle, normalized_path
from tests.chaos.parts import CatalogS3, Workers
from tests.chaos.readback import Record, read_topic
from tests.chaos.tally import CRASH_POINTS, Tally, crash_point_in, fences_in
from tests.integration.support import settings_env

__all__ = ["RunResult", "chaos_run"]


def _difference(want: dict[str, Any], got: dict[str, Any] | None) -> str:
    if got is None:
        return f"missing; expected {want}"
    parts = [
        f"{k}: expected {want[k]!r}, got {got.get(k)!r}"
        for k in ("version", "deleted", "name", "enabled")
        if want[k] != got.get(k)
    ]
    wanted = {i["file_path"]: i for i in want["images"]}
    found = {i["file_path"]: i for i in got["images"]}
    for path in sorted(set(wanted) | set(found)):
        if wanted.get(path) != found.get(path):
            parts.append(f"{path}: expected {wanted.get(path)}, got {found.get(path)}")
    return "; ".join(parts)


Log = Callable[[str], None]
# Faults of processes and parts, drawn at random into each phase's schedule.
FAULTS = ("kill", "join", "leave", "s3", "postgres", "webhook")
# Faults of the three-node Kafka cluster, under load (one planned in each phase, more may be
# drawn): one at a time, each waits until every replica is back in sync before the next.
BROKER_FAULTS = ("broker_kill", "broker_pause", "controller_kill", "rolling")
# Faults of the network between hosts (one planned in each phase, more may be drawn).
NET_FAULTS = ("zombie", "worker_pg", "broker_cut", "s3_cut", "receiver_cut", "slow")
# Workers kept alive per job during a phase: the gallery sync, the forwarder, the replicator,
# the object indexer (on the bucket's SQS queue: no consumer group, so joins and leaves
# churn no group of its own, only the queue's in-flight messages).
JOBS = {"consume": 2, "forward": 2, "replicate": 2, "objects": 2}
ARGV = {"objects": ("objects", "consume")}
KAFKA_GROUPS = ("consume", "forward", "replicate")  # the jobs that are members of a group
# Crash points: every worker started to replace one that died is armed with both, at this
# probability per batch; and each phase plans one point in a worker of its own, armed with
# that point alone at PLANNED_CRASH_P (of a job that commits batches in every phase).
CRASH_P = 0.04
PLANNED_CRASH_P = 0.3
LEAVE_WAIT_S = 45.0
SESSION_TIMEOUT_MS = 6000
# Longer than the brokers' session with the controller (broker.session.timeout.ms, 9 s):
# a broker paused or cut off this long is fenced, and its replicas leave every ISR.
BROKER_FENCE_S = 12.0
SECRET = "whsec_" + base64.b64encode(b"chaos campaign signing secret!!!").decode()


@dataclass
class RunResult:
    seed: int
    tally: Tally = field(default_factory=Tally)
    events: int = 0
    replayed: int = 0  # dead letters the replay had to bring back (read by the harness)
    rechecks: int = 0  # GalleryRecheck events the gallery recorded
    lag_bumps: int = 0  # extra content changes of overwritten objects' images (old bytes stored)
    bounded: int = 0  # images whose content_version is bounded, not exact (see ``compare``)
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Run:
    def __init__(self, seed: int, workdir: Path, log: Log) -> None:
        self.seed = seed
        self.rng = random.Random(seed * 7919)
        self.workdir = workdir
        self._started = time.monotonic()
        self._log = log
        self.result = RunResult(seed)
        self.catalog: Catalog = generate(seed)
        self.tally = self.result.tally
        self.ends: dict[tuple[str, int], int] = {}
        self._seen_exits: dict[str, int] = {}
        self.outcomes: list[dict[str, Any]] = []
        self.codec = Codec()
        # Every value published, with the catalog event it encodes: what the harness reads
        # back from a topic (a dead letter's original) is identified by its bytes, no decoding.
        self.sent: dict[bytes, dict[str, Any]] = {}
        self.resent: list[dict[str, Any]] = []  # events published twice (a slice sent again)
        self._cluster_lock = asyncio.Lock()
        # One outage of a part at a time: a second restart of PostgreSQL planned inside the
        # first's downtime stopped a server that was not running (seed 14: pg_ctl failed,
        # and with it the run). Planned twice, a part goes down twice, one after the other.
        self._part_locks = {part: asyncio.Lock() for part in ("s3", "postgres", "webhook")}
        self._admin: Any = None
        self._slow_next = False
        self.links: dict[str, list[Link]] = {}  # worker -> its links through the fault proxy
        self.zombies: list[str] = []

    def log(self, line: str) -> None:
        """A line of the run's story, with the time since it began (also in run.log)."""
        line = f"[{time.monotonic() - self._started:6.1f}s] {line}"
        self._log(line)
        with (self.workdir / "run.log").open("a") as out:
            out.write(line + "\n")

    # -- set-up -----------------------------------------------------------------------

    async def setup(self) -> None:
        """Every part on a host of its own: three Kafka nodes, PostgreSQL, S3 and SQS, the
        webhook receiver, a fault proxy; each worker gets a host when it starts. The harness
        (this process: publishing, reading topics back, the replay, the checks) talks to
        them over the bridge, and is never cut off."""
        self.net = Network().start()
        net = self.net
        self.brokers = [net.host(f"kafka-{i}") for i in (1, 2, 3)]
        self.pg_host, self.s3_host = net.host("postgres"), net.host("s3")
        self.hook_host = net.host("receiver")
        self.proxy: FaultProxy | None = None
        with contextlib.suppress(Exception):  # delay needs Toxiproxy (make netfaults)
            self.proxy = FaultProxy(net, seed=self.seed, log=self.workdir / "toxiproxy.log")
            await asyncio.to_thread(self.proxy.start)
        self.s3 = CatalogS3(self.s3_host)
        self.s3.start()
        self.cluster = kafka_cluster(self.workdir / "kafka", self.brokers)
        await asyncio.to_thread(self.cluster.start)
        self.bootstrap = self.cluster.bootstrap()
        self.receiver = serve_receiver(self.hook_host, SECRET)
        self.pg = HostedPostgres(self.pg_host)
        await asyncio.to_thread(self.pg.start)
        await ensure_database(self.pg.admin, "streamer")
        self.dsn = self.pg.dsn("streamer")
        self.log(
            f"hosts: kafka {[h.address for h in self.brokers]}, postgres {self.pg_host.address},"
            f" s3 {self.s3_host.address}, receiver {self.hook_host.address}"
        )
        bucket = f"catalog-{self.seed}"
        s3 = self.s3.client()
        s3.create_bucket(Bucket=bucket)
        s3.create_bucket(Bucket=f"replica-{self.seed}")
        self.queue_url = self.s3.notify_queue(bucket)
        self.settings = Settings.load(
            None,
            kafka_bootstrap=self.bootstrap,
            topic_partitions=6,
            session_timeout_ms=6000,
            database_url=self.dsn,
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
        await migrate_all(self.dsn)
        await asyncio.to_thread(create_topics, self.settings)
        self._upload(self.catalog.objects)
        env = settings_env(self.settings)

        env["STREAMER_WEBHOOK_SECRET"] = SECRET
        self.jobs = {
            command: Workers(self.workdir, env, command, ARGV.get(command, ()), place=self._place)
            for command in JOBS
        }
        self.publisher = Publisher(self.settings.kafka)
        self.publisher.start()

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
        """Everything the run started is stopped, whatever state a failed run left: each step
        on its own, the producer bounded (a run cancelled by the test's timeout may leave a
        thread of ours inside it), the network last (it kills whatever is left inside)."""
        for workers in getattr(self, "jobs", {}).values():
            with contextlib.suppress(Exception):
                workers.stop_all()
        steps: list[Callable[[], object]] = []
        if hasattr(self, "receiver"):
            steps.append(self.receiver.down)
        if hasattr(self, "cluster"):
            steps.append(self.cluster.kill)
        if hasattr(self, "pg"):
            steps.append(self.pg.destroy)
        if hasattr(self, "s3") and self.s3.up:
            steps.append(self.s3.stop)
        if getattr(self, "proxy", None) is not None:
            steps.append(self.proxy.stop)  # type: ignore[union-attr]
        for step in steps:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(step)
        if hasattr(self, "publisher"):
            closing = threading.Thread(
                target=lambda: self.publisher.close(timeout_s=5),
                name="close-publisher",
                daemon=True,
            )
            closing.start()
            await asyncio.to_thread(closing.join, 15)
        if hasattr(self, "net"):
            await asyncio.to_thread(self.net.close)

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
        """A slice of a wave, sent again as a whole until every message is acknowledged, as a
        source would (the redelivered ones are counted: the checks allow for them)."""
        for attempt in range(5):
            for record in events:
                data = {k: v for k, v in record.items() if k != "type"}
                event = parse_event(record["type"], data)
                topic = topic_for(event, self.settings.topics)
                value = self.codec.encode(event, topic=topic)
                self.sent[value] = record
                self.publisher.produce(topic, value, key=event.sku.encode())
            try:
                self.publisher.flush(timeout_s=120)
                break
            except DeliveryError as exc:
                if attempt == 4:
                    raise
                self.log(f"  publishing: {exc.message[:160]}; the slice is sent again")
                self.resent.extend(events)
        self._note_ends(self.publisher.end_offsets)

    def _send_garbage(self) -> None:
        for attempt in range(5):
            for sku, garbage in self.catalog.garbage:
                self.publisher.produce(self.settings.topics.media_topic, garbage, key=sku.encode())
            try:
                self.publisher.flush(timeout_s=120)
                return
            except DeliveryError:
                if attempt == 4:
                    raise

    def _note_ends(self, ends: dict[tuple[str, int], int]) -> None:
        for tp, end in ends.items():
            self.ends[tp] = max(self.ends.get(tp, 0), end)

    async def drained(self) -> bool:
        try:
            async with connect(self.dsn, timeout_s=2) as conn:
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
                self.log("drained")
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
        async with connect(self.dsn) as conn:
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

    def _read(self, topic: str) -> list[Record]:
        return read_topic(self.bootstrap, topic)

    def _topic_ends(self, topic: str) -> dict[tuple[str, int], int]:
        """Exact ends of a topic, from the records themselves (not watermarks)."""
        ends: dict[tuple[str, int], int] = {}
        for record in self._read(topic):
            tp = (topic, record.partition)
            ends[tp] = max(ends.get(tp, 0), record.offset + 1)
        return ends

    def _outcome_ends(self) -> dict[tuple[str, int], int]:
        """Exact ends of the outcome topic, from the records themselves (not watermarks)."""
        topic = self.settings.topics.outcome_topic
        ends: dict[tuple[str, int], int] = {}
        self.outcomes = []
        for record in self._read(topic):
            tp = (topic, record.partition)
            ends[tp] = max(ends.get(tp, 0), record.offset + 1)
            self.outcomes.append(self.codec.decode(record.value).data)
        return ends

    async def _group_at(self, group: str, ends: dict[tuple[str, int], int]) -> bool:
        try:
            async with connect(self.dsn, timeout_s=2) as conn:
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

    def _account_exits(self) -> None:
        """Workers that died since last looked at: by a crash point (their log names it),
        or by anything else (a mismatch)."""
        for command, workers in self.jobs.items():
            workers.alive()
            seen = self._seen_exits.get(command, 0)
            for name, code, how in workers.exits[seen:]:
                if how != "died":
                    continue
                if code == -9:
                    point = crash_point_in(workers.log_path(name))
                    self.tally.crashed(point, name, command)
                    self.log(f"  {name} died by SIGKILL: crash point {point}")
                else:
                    self.log(f"  {name} died (exit {code})")
                    self.result.mismatches.append(f"{name} died with exit {code}")
            self._seen_exits[command] = len(workers.exits)

    def _left(self, command: str, name: str, code: int) -> None:
        """A worker sent SIGTERM exits 0; one that reached a crash point while finishing its
        batch died by it (counted as such)."""
        if code == 0:
            return
        point = crash_point_in(self.jobs[command].log_path(name)) if code == -9 else None
        if point is not None:
            self.tally.crashed(point, name, command)
            self.log(f"  {name} died by SIGKILL while leaving: crash point {point}")
        else:
            self.result.mismatches.append(f"{name} did not leave cleanly: exit {code}")

    def _keep_workers(self, *, min_workers: int, crash_points: bool) -> None:
        self._account_exits()
        for command, workers in self.jobs.items():
            while len(workers.alive()) < min(min_workers, JOBS[command]):
                self._start_worker(command, crash_points)

    def _place(self, name: str) -> Host:
        """A new worker's host; its links to the brokers go through the fault proxy when a
        ``slow`` fault asked for this worker (before it connects: see ``faultproxy``)."""
        host = self.net.host(name)
        if self._slow_next and self.proxy is not None:
            self._slow_next = False
            self.links[name] = [self.proxy.interpose(host, b, 9092) for b in self.brokers]
        return host

    def _start_worker(self, command: str, crash_points: bool, *, only: str | None = None) -> str:
        if only is not None:
            points = {only: PLANNED_CRASH_P}
        else:
            points = dict.fromkeys(CRASH_POINTS, CRASH_P) if crash_points else {}
        spec = ",".join(f"{point}:{p}" for point, p in points.items())
        name = self.jobs[command].add(crash_points=spec, seed=self.rng.randint(0, 10**6))
        self.tally.arm(list(points))
        armed = f", armed: {spec}" if spec else ""
        host = self.jobs[command].hosts[name]
        self.log(
            f"  {name} started (pid {self.jobs[command].procs[name].pid},"
            f" host {host.address}{armed})"
        )
        return name

    def schedule(self, window_s: float, crash_point: str) -> list[tuple[float, str]]:
        """Faults at seeded times: 3 to 5 of any kind, one of the cluster and one of the
        network for sure, and a crash point in the first half."""
        rng = self.rng
        kinds = [rng.choice(FAULTS + BROKER_FAULTS + NET_FAULTS) for _ in range(rng.randint(3, 5))]
        kinds += [rng.choice(BROKER_FAULTS), rng.choice(NET_FAULTS)]
        planned = [(rng.uniform(0.5, window_s), kind) for kind in kinds]
        planned.append((rng.uniform(0.5, window_s / 2), f"crash:{crash_point}"))
        for _, kind in planned:
            if not kind.startswith("crash:"):
                self.tally.plan(kind)
        return sorted(planned)

    async def fault(self, kind: str) -> None:
        if kind in BROKER_FAULTS:
            async with self._cluster_lock:  # one broker fault at a time, ISRs whole between
                await self._broker_fault(kind)
            return
        if kind in NET_FAULTS:
            await self._net_fault(kind)
            return
        rng = self.rng
        command = rng.choice(sorted(JOBS))  # drawn for every fault, so seeds keep their draws
        if kind in self._part_locks:
            async with self._part_locks[kind]:
                await self._part_fault(kind)
            return
        workers = self.jobs[command]
        if kind == "kill":
            alive = workers.alive()
            if not alive:
                self.tally.miss(kind, f"no {command} worker alive")
                return
            name = rng.choice(alive)
            workers.kill(name)
            self.log(f"  fault: SIGKILL {name}")
        elif kind == "join":
            name = self._start_worker(command, crash_points=False)
            self.log(f"  fault: {name} joins")
        elif kind == "leave":
            await self._leave()
            return
        elif kind.startswith("crash:"):
            # A worker of a job that commits batches in every phase (the object indexer
            # has nothing to do in phase 1), armed with this point alone: counted when its
            # log says the point killed it.
            command = rng.choice(KAFKA_GROUPS)
            name = self._start_worker(command, True, only=kind.removeprefix("crash:"))
            self.log(f"  fault: {name} joins, to die at {kind.removeprefix('crash:')}")
            return
        else:
            raise ValueError(f"unknown fault {kind!r}")
        self.tally.fire(kind, command)

    async def _part_fault(self, kind: str) -> None:
        """A dependency down for a second or two, then back (under its part's lock)."""
        rng = self.rng
        if kind == "s3":
            down = rng.uniform(1.0, 3.0)
            self.log(f"  fault: S3 down for {down:.1f}s")
            await asyncio.to_thread(self.s3.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.s3.start)
        elif kind == "postgres":
            down = rng.uniform(0.5, 2.0)
            self.log(f"  fault: PostgreSQL restart ({down:.1f}s down)")
            await asyncio.to_thread(self.pg.stop, "immediate")
            await asyncio.sleep(down)
            await asyncio.to_thread(self.pg.start)
        else:
            down = rng.uniform(1.0, 3.0)
            self.log(f"  fault: webhook receiver down for {down:.1f}s")
            await asyncio.to_thread(self.receiver.down)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.hook_host.call, self.receiver.up)
        self.tally.fire(kind, None)

    # -- the cluster -----------------------------------------------------------------------

    def _isr_sizes(self) -> list[int]:
        """The ISR size of every partition of the run's topics, as the cluster's metadata
        says (asked of whichever broker answers)."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            # One client for the run; its connection errors (a broker down is the point)
            # go to a logger, not to stderr.
            self._admin = AdminClient(
                {"bootstrap.servers": self.bootstrap, "logger": logging.getLogger("chaos.admin")}
            )
        topics = self._admin.list_topics(timeout=10).topics
        return [len(p.isrs) for t in topics.values() for p in t.partitions.values()]

    async def _in_sync(self, timeout_s: float = 180) -> int:
        """Until every replica is in sync again; the smallest ISR seen while waiting."""
        deadline = time.monotonic() + timeout_s
        smallest = 3
        while True:
            with contextlib.suppress(Exception):
                sizes = await asyncio.to_thread(self._isr_sizes)
                if sizes:
                    smallest = min(smallest, *sizes)
                    if min(sizes) == 3:
                        return smallest
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas not back in sync within {timeout_s:.0f}s")
            await asyncio.sleep(0.5)

    def _log_marks(self) -> dict[int, int]:
        return {
            n.node_id: n.log.stat().st_size if n.log.exists() else 0 for n in self.cluster.nodes
        }

    def _fenced_since(self, node_id: int, marks: dict[int, int]) -> bool:
        """Whether a controller logged fencing ``node_id`` since ``marks`` (which removes it
        from every ISR): the evidence for a broker cut off from the others, which the harness
        still reaches and which answers metadata as it last knew it, every ISR whole."""
        line = f"Fencing broker {node_id} at epoch".encode()
        for node in self.cluster.nodes:
            with contextlib.suppress(OSError), node.log.open("rb") as log:
                log.seek(marks.get(node.node_id, 0))
                if line in log.read():
                    return True
        return False

    async def _shrunk(
        self,
        least_s: float,
        most_s: float = 60.0,
        *,
        fenced: tuple[int, dict[int, int]] | None = None,
    ) -> int:
        """The smallest ISR seen while the fault holds: at least ``least_s``, and on until
        an ISR shrank (or, with ``fenced``, a controller logged fencing that node),
        ``most_s`` at most."""
        started = time.monotonic()
        smallest = 3
        while (elapsed := time.monotonic() - started) < most_s:
            seen = smallest < 3 or (fenced is not None and self._fenced_since(*fenced))
            if seen and elapsed >= least_s:
                break
            with contextlib.suppress(Exception):
                sizes = await asyncio.to_thread(self._isr_sizes)
                smallest = min(smallest, *sizes) if sizes else smallest
            await asyncio.sleep(0.5)
        return smallest

    async def _broker_fault(self, kind: str) -> None:
        cluster, rng = self.cluster, self.rng
        node = cluster.node(rng.randint(1, 3))
        if kind == "controller_kill":
            node = cluster.node(await asyncio.to_thread(cluster.quorum_leader))
        if kind in ("broker_kill", "controller_kill"):
            down = rng.uniform(2.0, 8.0)
            what = "the active controller" if kind == "controller_kill" else "a broker"
            self.log(
                f"  fault: SIGKILL {what}, node {node.node_id}, back after {down:.1f}s"
                " and once an ISR shrank"
            )
            await asyncio.to_thread(node.kill)
            smallest = await self._shrunk(down)
            await asyncio.to_thread(node.start)
            await asyncio.to_thread(node.wait_ready)
        elif kind == "broker_pause":
            self.log(
                f"  fault: SIGSTOP node {node.node_id} for {BROKER_FENCE_S:.0f}s"
                " and until it is fenced"
            )
            await asyncio.to_thread(node.pause)
            smallest = await self._shrunk(BROKER_FENCE_S)
            await asyncio.to_thread(node.resume)
        else:  # rolling: each node stopped (controlled shutdown) and started, in sync between
            self.log("  fault: rolling restart of the cluster")
            smallest = 3
            for each in cluster.nodes:
                await asyncio.to_thread(each.stop)
                smallest = min(smallest, await self._shrunk(0.0, most_s=30.0))
                await asyncio.to_thread(each.start)
                await asyncio.to_thread(each.wait_ready)
                await self._in_sync()
                self.log(f"    node {each.node_id} restarted, replicas in sync")
        await self._in_sync()
        self.tally.isr(kind, smallest)
        self.log(f"  {kind}: the smallest ISR seen was {smallest}, every replica back in sync")
        if smallest == 3:
            self.tally.miss(kind, "no ISR shrank")
            return
        self.tally.fire(kind)

    # -- the network -----------------------------------------------------------------------

    def _hosts_of(self, *commands: str) -> list[tuple[str, Host]]:
        return [
            (name, self.jobs[c].hosts[name])
            for c in commands
            for name in self.jobs[c].alive()
            if name not in self.jobs[c].leaving
        ]

    async def _cut(self, faults: list[Fault], seconds: float, most_s: float = 30.0) -> int:
        """Hold the cuts for ``seconds``, and on until they dropped a packet (a cut nobody
        tried to cross proves nothing) but ``most_s`` at most; lift them; the packets they
        dropped."""
        await asyncio.sleep(seconds)
        deadline = time.monotonic() + most_s - seconds
        while faults and time.monotonic() < deadline:
            counts = [await asyncio.to_thread(self.net.dropped, f) for f in faults]
            if any(sum(c.values()) for c in counts):
                break
            await asyncio.sleep(0.5)
        dropped = 0
        for fault in faults:
            await asyncio.to_thread(self.net.restore, fault)
            dropped += sum(fault.dropped.values())
        return dropped

    async def _net_fault(self, kind: str) -> None:
        rng, net = self.rng, self.net
        faults: list[Fault] = []
        if kind == "zombie":
            # A gallery worker cut off from every broker, not from PostgreSQL, for longer than
            # its session: the group gives its partitions to another worker, while the batch
            # it holds waits for the brokers with its offset rows locked. Its late commit must
            # be refused by the epoch fence (counted from the worker logs at the end).
            workers = self._hosts_of("consume")
            if len(workers) < 2:
                self.tally.miss(kind, "fewer than two gallery workers alive")
                return
            name, host, owned = await self._zombie_candidate()
            pid = self.jobs["consume"].procs[name].pid
            seconds = SESSION_TIMEOUT_MS / 1000 + rng.uniform(4.0, 10.0)
            self.log(
                f"  fault: {name} cut off from the brokers for {seconds:.0f}s and until"
                f" {len(owned)} partitions it owns are claimed by another worker (zombie)"
            )
            faults = [await asyncio.to_thread(net.cut, host, b) for b in self.brokers]
            self.zombies.append(name)
            started = time.monotonic()
            await asyncio.sleep(seconds)
            while time.monotonic() - started < 120:  # a partition still its own: held on
                now = await self._owned_by(pid)
                if now is not None and not owned & now:
                    break
                await asyncio.sleep(0.5)
            seconds = 0
        elif kind == "worker_pg":
            # A gallery worker: busy while a wave is published, so it meets the cut (an idle
            # one holds its pooled connections without a packet).
            workers = self._hosts_of("consume") or self._hosts_of(*JOBS)
            if not workers:
                self.tally.miss(kind, "no worker alive")
                return
            name, host = rng.choice(workers)
            seconds = rng.uniform(3.0, 8.0)
            self.log(f"  fault: {name} cut off from PostgreSQL for {seconds:.0f}s")
            faults = [await asyncio.to_thread(net.cut, host, self.pg_host)]
        elif kind == "broker_cut":
            async with self._cluster_lock:
                index = rng.randrange(3)
                alone, others = (
                    self.brokers[index],
                    self.brokers[:index] + self.brokers[index + 1 :],
                )
                self.log(
                    f"  fault: {alone.name} cut off from the other two for {BROKER_FENCE_S:.0f}s"
                )
                marks = self._log_marks()
                faults = [await asyncio.to_thread(net.cut, alone, o) for o in others]
                smallest = await self._shrunk(BROKER_FENCE_S, fenced=(index + 1, marks))
                fenced = self._fenced_since(index + 1, marks)
                dropped = await self._cut(faults, 0, most_s=0)
                await self._in_sync()
                self.tally.isr(kind, smallest)
                self.log(
                    f"  broker_cut: {dropped} packets dropped, smallest ISR seen {smallest},"
                    f" fenced by the controller: {fenced}"
                )
                self._fired_if(
                    kind,
                    dropped and (smallest < 3 or fenced),
                    "no packet dropped, or neither an ISR shrank nor the broker was fenced",
                )
            return
        elif kind in ("s3_cut", "receiver_cut"):
            server = self.s3_host if kind == "s3_cut" else self.hook_host
            users = ("consume", "replicate", "objects") if kind == "s3_cut" else ("forward",)
            workers = self._hosts_of(*users)
            if not workers:
                self.tally.miss(kind, f"no {'/'.join(users)} worker alive")
                return
            seconds = rng.uniform(2.0, 5.0)
            self.log(
                f"  fault: {server.name} cut off from {len(workers)} workers for {seconds:.0f}s"
            )
            faults = [await asyncio.to_thread(net.cut, host, server) for _, host in workers]
        elif kind == "slow":
            await self._slow()
            return
        else:
            raise ValueError(f"unknown fault {kind!r}")
        # Held until someone tried to cross it: the jobs may be held up by another fault. The
        # cap covers two zombies at once, which stall the gallery (so the forwarders upstream
        # of the receiver) for up to two produce timeouts, 120 s (seed 2 met it at 90 s).
        dropped = await self._cut(faults, seconds, most_s=240.0)
        self.log(f"  {kind}: lifted, {dropped} packets dropped")
        self._fired_if(kind, dropped > 0, "the cut dropped no packet")

    async def _zombie_candidate(self) -> tuple[str, Host, set[tuple[str, int]]]:
        """A gallery worker that owns partitions (one just started may own none yet: waited
        for, 30 s at most, then any)."""
        deadline = time.monotonic() + 30
        while True:
            workers = self._hosts_of("consume")
            owning = []
            for name, host in workers:
                proc = self.jobs["consume"].procs.get(name)
                owned = await self._owned_by(proc.pid) if proc is not None else None
                if owned:
                    owning.append((name, host, owned))
            if owning or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if owning:
            return self.rng.choice(owning)
        name, host = self.rng.choice(workers)
        return name, host, set()

    async def _owned_by(self, pid: int) -> set[tuple[str, int]] | None:
        """The gallery partitions whose epoch the worker with this PID holds (None: the
        database did not answer)."""
        with contextlib.suppress(Exception):
            async with connect(self.dsn, timeout_s=2) as conn:
                rows = await conn.fetch(
                    "SELECT topic, partition FROM consumer_offsets"
                    " WHERE group_id = $1 AND owner LIKE $2",
                    self.settings.gallery.group_id,
                    f"%-{pid}-%",
                )
            return {(r["topic"], r["partition"]) for r in rows}
        return None

    def _fired_if(self, kind: str, fired: object, why_not: str) -> None:
        if fired:
            self.tally.fire(kind)
        else:
            self.tally.miss(kind, why_not)

    async def _slow(self) -> None:
        """A new worker whose links to the brokers are slow (Toxiproxy: delay with jitter)
        and lossy (nftables: a share of its packets dropped) for a while, then clear."""
        kind, rng = "slow", self.rng
        if self.proxy is None:
            self.tally.miss(kind, "toxiproxy-server is not installed (make netfaults)")
            return
        command = rng.choice(KAFKA_GROUPS)
        self._slow_next = True
        name = self._start_worker(command, crash_points=False)
        links = self.links.get(name, [])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the worker connected through the proxy
            if any(link.connections() for link in links):
                break
            await asyncio.sleep(0.5)
        latency, jitter = rng.randint(100, 300), rng.randint(20, 100)
        loss = rng.uniform(3.0, 10.0)
        seconds = rng.uniform(5.0, 10.0)
        host = self.jobs[command].hosts[name]
        self.log(
            f"  fault: {name} joins over slow links to the brokers: {latency}±{jitter} ms,"
            f" {loss:.0f}% loss, for {seconds:.0f}s"
        )
        for link in links:
            await asyncio.to_thread(link.latency, latency, jitter)
        faults = [await asyncio.to_thread(self.net.lose, host, b, loss) for b in self.brokers]
        dropped = await self._cut(faults, seconds)
        routed = sum(link.connections() for link in links)
        for link in links:
            await asyncio.to_thread(link.clear)
        self.log(f"  slow: {routed} connections through the proxy, {dropped} packets lost")
        self._fired_if(kind, routed and dropped, "no connection through the proxy or no loss")

    async def _leave(self) -> None:
        """SIGTERM to a worker (one that catches it by now) of a job with another worker
        alive, whenever it comes: a real broker completes a rebalance in which one member
        leaves while another joins. No candidate within LEAVE_WAIT_S: not fired."""
        started = time.monotonic()
        while True:
            candidates: list[tuple[str, list[str]]] = []
            for command in sorted(JOBS):
                workers = self.jobs[command]
                alive = workers.alive()
                ready = [
                    n for n in alive if n not in workers.leaving and workers.handles_sigterm(n)
                ]
                if len(alive) - len(workers.leaving) >= 2 and ready:
                    candidates.append((command, ready))
            waited = time.monotonic() - started
            if candidates:
                break
            if waited > LEAVE_WAIT_S:
                why = f"no job with two workers within {LEAVE_WAIT_S:.0f} s"
                self.tally.miss("leave", why)
                self.log(f"  fault: leave not fired: {why}")
                return
            await asyncio.sleep(0.25)
        command, ready = self.rng.choice(candidates)
        name = self.rng.choice(ready)
        code = await self.jobs[command].leave(name)
        self.log(f"  fault: {name} leaves (exit {code}, after {waited:.0f} s)")
        self.tally.fire("leave", command)
        self._left(command, name, code)

    async def phase(
        self, name: str, work: Awaitable[None], window_s: float, crash_point: str
    ) -> None:
        """``work`` (publishing) with the fault schedule running beside it, then a drain."""
        self.log(f"{name}")
        started = time.monotonic()
        faults = self.schedule(window_s, crash_point)
        self.log(f"  schedule: {[(round(at, 1), kind) for at, kind in faults]}")

        async def inject() -> None:
            # Each fault at its time, beside the others (a rolling restart takes a while).
            running = []
            for at, kind in faults:
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                self._keep_workers(min_workers=2, crash_points=True)
                running.append(asyncio.create_task(self.fault(kind)))
            await asyncio.gather(*running)

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
        points = list(CRASH_POINTS)
        self.rng.shuffle(points)

        async def wave1() -> None:
            await asyncio.to_thread(self._send_garbage)
            await self.publish(catalog.wave1, duration_s=12)

        await self.phase("phase 1: wave 1 under faults", wave1(), 14, points[0])
        self._upload(catalog.late)
        # Half the overwrites between the phases; the other half while wave 2 is applied and
        # faults happen, so the indexer's re-checks race the gallery's own writes.
        between = {p: b for p, b in catalog.overwritten.items() if p not in catalog.during}
        during = {p: b for p, b in catalog.overwritten.items() if p in catalog.during}
        self._upload(between)
        # The indexer takes the late and overwritten objects, and the galleries their
        # re-checks, before any later event reads them (see ``compare``).
        await self.until_drained()
        self.replay = await asyncio.to_thread(self._dead_letters_to_replay)
        self.result.replayed = len(self.replay)
        replayed = await replay_dead_letters(
            self.settings.kafka,
            self.settings.database,
            self.settings.runtime.dlq_topic,
            DeadLetterFilter(reason="object_missing", job="gallery"),
        )
        self._note_ends(replayed.end_offsets)
        self.log(
            f"replayed {replayed.replayed} object_missing dead letters"
            f" (the dead-letter topic holds {len(self.replay)})"
        )
        sent = sorted((r.dlq_partition, r.dlq_offset) for r in replayed.records)
        held = sorted((r.partition, r.offset) for r, _ in self.replay)
        if sent != held:
            self.result.mismatches.append(
                f"the replay sent {len(sent)} dead letters, the topic holds {len(held)}:"
                f" not sent {sorted(set(held) - set(sent))[:10]},"
                f" not held {sorted(set(sent) - set(held))[:10]}"
            )

        async def wave2() -> None:
            await asyncio.gather(
                self.publish(catalog.wave2, 12), self._overwrite_later(during, window_s=10)
            )

        await self.phase("phase 2: wave 2 under faults", wave2(), 14, points[1])
        self.log("checks")
        self.result.mismatches.extend(await self.compare())
        self.result.mismatches.extend(self.check_forwarded())
        self.result.mismatches.extend(await self.check_replica())
        self.result.mismatches.extend(await self.check_index())
        self.result.mismatches.extend(await self.check_overwritten())
        self._account_exits()
        for command, workers in self.jobs.items():
            for name in workers.alive():
                self._left(command, name, await workers.leave(name))
        for workers in self.jobs.values():
            for name in {*workers.hosts}:
                fences = fences_in(workers.log_path(name))
                self.tally.fences += fences
                if name in self.zombies:
                    self.tally.zombie_fences += fences
        self.result.mismatches.extend(self.tally.problems())
        self.result.seconds = time.monotonic() - started
        return self.result

    def _dead_letters_to_replay(self) -> list[tuple[Record, dict[str, Any]]]:
        """What a replay of the gallery's ``object_missing`` dead letters must send: every
        such record of the dead-letter topic (the harness reads all of it), in its order,
        with the catalog event whose bytes it carries."""
        out = []
        for record in self._read(self.settings.runtime.dlq_topic):
            if _header(record, "job") != "gallery" or _header(record, "reason") != (
                "object_missing"
            ):
                continue
            event = self.sent.get(record.value or b"")
            if event is None:
                raise AssertionError(
                    f"dead letter {record.partition}:{record.offset} carries bytes never published"
                )
            out.append((record, event))
        return out

    async def compare(self) -> list[str]:
        """The final state exactly as the oracle has it; dead letters and applications
        within what the contract allows.

        What is exact: every gallery (images, ETags, metadata, roles, versions, the
        product's name and enabled flag) and, but for the one bound below, every image's
        ``content_version``. What has bounds instead: a SKU's product and media events travel
        on two topics, so a media event near the SKU's delete may be partial or stale
        depending on which arrives first (the catalog keeps reused ids and the delete's
        version clear of it); the state is the same either way, the dead letters and
        ``applications`` are not.

        The one bound on ``content_version``, and the schedule that makes it: an object
        overwritten *while wave 2 is applied* (``catalog.during``), in the gallery of a SKU
        with at least one event after wave 1 (replayed or in wave 2) that lists it. The
        oracle lets every event after wave 1 see the new bytes. With
        ``STREAMER_ETAG_SOURCE=index``, such an event applied after the overwrite but before
        the indexer committed its notification (or before S3 took the overwrite at all)
        reads the old ETag: the image then holds the old bytes, and a re-check (asked by the
        indexer, or by the batch itself when it saw the newer index row) moves it to the new
        ones. Each such event can put the old bytes back at most once (one change to them,
        one change away from them: 2 more than the oracle), so the bound is: at least the
        oracle's, at most 2 more per listing event. The ETags themselves are exact (the
        new one: the index source's cross-check between the batch and the indexer promises
        it). Every other image is exact: the objects overwritten or uploaded between the
        phases are in the index, and their re-checks applied, before the replay and wave 2
        start (``run`` waits for it), so no later event can read their old bytes. Re-checks
        are each applied at most once (their ids derive from the change).
        """
        oracle = self.expected()
        problems: list[str] = []
        suspects: set[str] = set()
        actual = {g["sku"]: g async for g in export_galleries(self.dsn)}
        for want in oracle.export():
            got = actual.pop(want["sku"], None)
            if got != want:
                problems.append(f"gallery {want['sku']}: {_difference(want, got)}")
                suspects.add(want["sku"])
        for sku, got in actual.items():
            problems.append(f"gallery {sku}: not expected, got {got}")
            suspects.add(sku)
        async with connect(self.dsn) as conn:
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
        listing = self._listing_during()
        wrong: dict[tuple[str, str], tuple[int | None, int | None, int]] = {}
        for k in set(want_versions) | set(versions):
            want_v, got_v, extra = want_versions.get(k), versions.get(k), 2 * listing[k]
            if want_v is not None and got_v is not None and extra:
                self.result.bounded += 1
                if want_v <= got_v <= want_v + extra:
                    self.result.lag_bumps += got_v - want_v
                    continue
            elif want_v == got_v:
                continue
            wrong[k] = (want_v, got_v, extra)
        if wrong:
            problems.append(
                "content_version (expected, got, extra allowed): "
                f"{dict(sorted(wrong.items())[:10])}"
            )
            suspects |= {sku for sku, _ in wrong}
        deliveries = Counter(e["event_id"] for e in self.catalog.wave1 + self.catalog.wave2)
        deliveries.update(self._replayed_ids)
        deliveries.update(e["event_id"] for e in self.resent)
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

    def _listing_during(self) -> Counter[tuple[str, str]]:
        """(SKU, path) of an object overwritten during wave 2 -> the events after wave 1
        (replayed or in wave 2) of that SKU that list it."""
        listing: Counter[tuple[str, str]] = Counter()
        wave2 = {id(e) for e in self.catalog.wave2}
        again = [e for e in self.resent if id(e) in wave2]
        for event in [e for _, e in self.replay] + self.catalog.wave2 + again:
            for image in event.get("images", ()):
                path = normalized_path(image["file_path"])
                if path in self.catalog.during:
                    listing[(event["sku"], path)] += 1
        return listing

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
        async for gallery in export_galleries(self.dsn):
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
        async with connect(self.dsn) as conn:
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
            async for g in export_galleries(self.dsn)
            for i in g["images"]
            if i["file_path"] in new and i["etag"] != new[i["file_path"]]
        ]
        return [f"images still on an overwritten object's old ETag: {stale[:10]}"] if stale else []

    def check_dead_letters(self, oracle: Oracle, suspects: set[str]) -> list[str]:
        """Every dead letter of the topic (read by the harness) explained by the oracle, and
        every one the oracle expects there (but for media events near their SKU's delete)."""
        letters: Counter[tuple[str, str]] = Counter()
        garbage_values = {value for _, value in self.catalog.garbage}
        garbage: set[bytes] = set()
        others: Counter[tuple[str | None, str | None]] = Counter()
        strangers: list[tuple[int, int, str | None]] = []
        for record in self._read(self.settings.runtime.dlq_topic):
            job, reason = _header(record, "job"), _header(record, "reason")
            if job != "gallery":
                others[(job, reason)] += 1
            elif record.value in garbage_values and reason == "unknown_framing":
                garbage.add(record.value)  # each once: a redelivered batch may send it again
            elif (event := self.sent.get(record.value or b"")) is not None:
                letters[(event["event_id"], reason or "")] += 1
            else:
                strangers.append((record.partition, record.offset, reason))
        problems = []
        if others:
            problems.append(f"{sum(others.values())} dead letters of other jobs: {dict(others)}")
        if strangers:
            problems.append(f"dead letters of messages the harness never sent: {strangers[:10]}")
        if len(garbage) != len(self.catalog.garbage):
            problems.append(
                f"{len(garbage)} undecodable messages dead-lettered, sent {len(self.catalog.garbage)}"
            )
        expected = {(letter.event_id, letter.reason) for letter in oracle.letters}
        unexplained = {k: n for k, n in letters.items() if k not in expected}
        if unexplained:
            problems.append(f"dead letters the oracle cannot explain: {unexplained}")
            suspects |= {self.sku_of.get(e, "?") for e, _ in unexplained}
        missing = sorted(k for k in expected - set(letters) if k[0] not in self._near_delete)
        if missing:
            problems.append(f"dead letters the oracle expects, not in the topic: {missing[:10]}")
            suspects |= {self.sku_of[e] for e, _ in missing}
        return problems

    def expected(self) -> Oracle:
        """The oracle's state: wave 1 with the first objects, then what the replay had to
        bring back (the dead letters the harness read, in the topic's order), the re-checks
        of the overwritten objects and wave 2 with the new objects."""
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
        self._replayed_ids = []
        for _, event in self.replay:
            self._replayed_ids.append(event["event_id"])
            oracle.apply(event, after)
        self.rechecked = oracle.recheck(after, catalog.overwritten)
        for event in catalog.wave2:
            oracle.apply(event, after)
        return oracle

    async def explain(self, sku: str, oracle: Oracle, applications: dict[str, int]) -> str:
        """The SKU's story: each event as published, the oracle's outcome and what was recorded."""
        async with connect(self.dsn) as conn:
            rows = {
                r["event_id"]: (r["outcome"], r["reason"])
                for r in await conn.fetch(
                    "SELECT event_id::text AS event_id, outcome, reason FROM event_outcomes"
                    " WHERE sku = $1",
                    sku,
                )
            }
            product = await conn.fetchrow(
                "SELECT product_version, product_event_id::text AS product_event, gallery_version,"
                " gallery_event_id::text AS gallery_event, deleted, name, enabled"
                " FROM products WHERE sku = $1",
                sku,
            )
        lines = [f"story of {sku} (stored {dict(product) if product else None}):"]
        for wave, events in (("1", self.catalog.wave1), ("2", self.catalog.wave2)):
            for event in events:
                if event["sku"] != sku:
                    continue
                images = (
                    [
                        (i["file_path"], i.get("position"), tuple(i.get("roles") or ()))
                        for i in event["images"]
                    ]
                    if "images" in event
                    else (event.get("name"), event.get("enabled"))
                )
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


def _header(record: Record, name: str) -> str | None:
    """A dead letter's ``streamer.error.<name>`` header (the README's dead-letter contract)."""
    value = record.headers.get(f"streamer.error.{name}")
    return value.decode("utf-8", "replace") if value is not None else None


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
