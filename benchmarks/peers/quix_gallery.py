"""The gallery sync written idiomatically in quix-streams: the peer of ``make bench``
(``quixstreams_first_sync``, ``quixstreams_noop_resync``).

Runs in its own virtual environment (``.venv-quix``, see the Makefile: quix-streams 3.28 pins
``confluent-kafka<2.13``, streamer needs 2.13+), so it imports neither ``streamer`` nor
``benchmarks``; ``benchmarks/suite.py`` starts it as a subprocess and reads one JSON object
from its stdout: events, images, HEADs, rows written, seconds, CPU seconds, peak RSS.

The job, as quix-streams' documentation builds one:

- an ``Application`` consuming the topics with a custom ``Deserializer`` (docs/advanced/
  serialization.md: quix's own ``AvroDeserializer`` reads bare schemaless Avro or Confluent
  framing; streamer's topics carry Avro single-object encoding, a 10-byte header naming the
  writer schema by fingerprint, so the deserializer reads that header and hands the body to
  fastavro's ``schemaless_reader``, as quix's does);
- a ``StreamingDataFrame`` that keeps the gallery events and normalises them (``filter``,
  ``apply``);
- a ``BatchingSink`` subclass (docs/connectors/sinks/custom-sinks.md; ``BatchingSink``'s
  docstring: "databases, object stores, and other destinations where writing every message
  is not optimal"). quix's ``PostgreSQLSink`` (quixstreams/sinks/community/postgresql.py)
  cannot do the same upsert: its ``upsert_on_primary_key`` is ``ON CONFLICT DO UPDATE`` of
  every row, so a no-op re-sync would rewrite every image row, and it adapts lists to JSONB
  where the gallery's ``roles`` is ``text[]``. So its ``write()`` does what that sink does
  (psycopg2, ``execute_values``, one transaction per batch) plus what the job needs: HEAD the
  batch's distinct objects concurrently (one boto3 client shared by a thread pool, as
  ``benchmarks/plain.py`` does), read the batch's stored rows, upsert only those that differ.

Batches: quix's ``BatchingSink`` keeps one batch per topic partition and writes them at each
checkpoint (``commit_interval``, 5 s, or ``commit_every`` messages, whichever first: the
sinks docs' "Performance Considerations" recommend ``commit_every`` to bound a batch);
``--commit-every 500`` matches the plain baseline's 500 messages per batch.

On a crash: quix's default ``processing_guarantee="at-least-once"`` (docs/configuration.md,
"Processing Guarantees"; docs/advanced/checkpointing.md) commits offsets after the sinks'
flush, so a crash between a ``write()`` and the offset commit writes that checkpoint's batches
again (these upserts are idempotent, so the table ends the same, but every effect of the
batch happens twice). ``"exactly-once"`` makes Kafka *outputs* transactional; it does not
cover a PostgreSQL sink. streamer commits its consumed offsets in the same PostgreSQL
transaction as the gallery (exactly-once effect).

Ends: the phase reads each partition from the group's committed offset (or the earliest) to
the end offset it is given; ``on_message_processed`` (an ``Application`` callback) marks a
partition done at its end and calls ``app.stop()`` once all are, which commits the last
checkpoint. The clock starts at the first message (quix has no public on-assign hook; that
leaves out at most one fetch wait before it), and any message at or past its partition's end
is counted, not written: the suite runs each quix phase before later phases publish, so
there is none.

Secrets arrive in the environment, never on the command line: ``PEER_DATABASE_URL``,
``PEER_KAFKA_CONFIG`` (librdkafka properties as JSON), and boto3's own ``AWS_*`` variables
(``AWS_ENDPOINT_URL_S3`` for an S3-compatible server). Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psycopg2
from botocore.config import Config
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form
from psycopg2.extras import execute_values
from quixstreams import Application, message_context
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models import Deserializer
from quixstreams.sinks import BatchingSink, SinkBatch

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
MANAGED_ROLES = ("image", "small_image", "thumbnail", "swatch_image")
ROLE_ALIASES = {"base": "image"}

STORED = "SELECT sku, file_path, etag, label, position, disabled FROM {table} WHERE sku = ANY(%s)"
UPSERT = """
INSERT INTO {table} (sku, file_path, etag, size_bytes, label, position, disabled, roles)
VALUES %s
ON CONFLICT (sku, file_path) DO UPDATE SET etag = EXCLUDED.etag,
    size_bytes = EXCLUDED.size_bytes, label = EXCLUDED.label, position = EXCLUDED.position,
    disabled = EXCLUDED.disabled, roles = EXCLUDED.roles
"""


class SingleObjectAvro(Deserializer):
    """Avro single-object encoding (C3 01 + CRC-64-AVRO fingerprint) of the media schema, any
    of its versions, read against the current one; other records become None (filtered)."""

    def __init__(self, schemas: Path, name: str = "MediaGalleryChanged") -> None:
        super().__init__()
        self.reader = parse_schema(json.loads((schemas / f"{name}.avsc").read_text()))
        self.writers: dict[bytes, Any] = {}
        for path in [schemas / f"{name}.avsc", *sorted((schemas / "history").glob(f"{name}.*"))]:
            parsed = parse_schema(json.loads(path.read_text()))
            digest = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            self.writers[digest] = parsed

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any] | None:
        if value[:2] != SINGLE_OBJECT_MAGIC:
            raise ValueError(f"not Avro single-object encoding (first bytes {value[:2].hex()})")
        writer = self.writers.get(value[2:10])
        if writer is None:
            return None  # another record type (a product event, a re-check)
        buf = io.BytesIO(value)
        buf.seek(10)
        record: dict[str, Any] = schemaless_reader(
            buf, writer, None if writer is self.reader else self.reader
        )
        return record


def gallery(event: dict[str, Any]) -> dict[str, Any]:
    """The contract's normalisation of what the sink writes: one leading slash on a path,
    roles aliased, managed ones kept in order; an image whose path escapes is left out."""
    images = []
    for image in event["images"]:
        path = "/" + image["file_path"].lstrip("/")
        segments = path[1:].split("/")
        if "\\" in path or {"", ".", ".."} & set(segments) or len(path.encode()) > 255:
            continue
        roles: list[str] = []
        for role in image["roles"]:
            name = ROLE_ALIASES.get(role.strip().lower(), role.strip().lower())
            if name in MANAGED_ROLES and name not in roles:
                roles.append(name)
        images.append((path, image["label"], image["position"], image["disabled"], roles))
    return {"sku": event["sku"].strip(), "images": images}


class GallerySink(BatchingSink):
    """One ``write()`` per topic partition and checkpoint: HEAD the batch's objects, then in
    one transaction read the batch's stored rows and upsert those that differ."""

    def __init__(self, dsn: str, table: str, bucket: str, prefix: str, head_threads: int) -> None:
        super().__init__()
        self.dsn, self.bucket, self.prefix = dsn, bucket, prefix.strip("/")
        self.stored_sql, self.upsert_sql = STORED.format(table=table), UPSERT.format(table=table)
        self.head_threads = head_threads
        self.totals = {"images": 0, "heads": 0, "rows_written": 0}
        self.conn: Any = None

    def setup(self) -> None:
        """Called by ``Application.run()`` before consuming (``BaseSink.start``)."""
        self.conn = psycopg2.connect(self.dsn)
        self.s3 = boto3.client(
            "s3",
            config=Config(
                max_pool_connections=self.head_threads,
                retries={"max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )
        self.pool = ThreadPoolExecutor(self.head_threads)

    def key(self, path: str) -> str:
        return f"{self.prefix}{path}" if self.prefix else path.lstrip("/")

    def head(self, key: str) -> tuple[str, dict[str, Any]]:
        return key, self.s3.head_object(Bucket=self.bucket, Key=key)

    def write(self, batch: SinkBatch) -> None:
        events = [item.value for item in batch]
        keys = {self.key(image[0]) for e in events for image in e["images"]}
        found = dict(self.pool.map(self.head, keys))
        self.totals["heads"] += len(keys)
        changed = []
        with self.conn, self.conn.cursor() as cur:  # one transaction, committed on exit
            cur.execute(self.stored_sql, ([e["sku"] for e in events],))
            stored = {(r[0], r[1]): r[2:] for r in cur.fetchall()}
            for e in events:
                for path, label, position, disabled, roles in e["images"]:
                    obj = found[self.key(path)]
                    etag = str(obj["ETag"]).strip('"')
                    if stored.get((e["sku"], path)) != (etag, label, position, disabled):
                        size = int(obj["ContentLength"])
                        changed.append(
                            (e["sku"], path, etag, size, label, position, disabled, roles)
                        )
            if changed:
                execute_values(cur, self.upsert_sql, changed)
        self.totals["images"] += sum(len(e["images"]) for e in events)
        self.totals["rows_written"] += len(changed)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.pool.shutdown()


def run(args: argparse.Namespace) -> dict[str, Any]:
    ends = {(t, int(p)): int(o) for t, p, o in json.loads(args.ends)}
    starts = {(t, int(p)): int(o) for t, p, o in json.loads(args.starts)}
    left = {tp for tp, end in ends.items() if end > starts.get(tp, 0)}
    kafka = json.loads(os.environ.get("PEER_KAFKA_CONFIG", "{}"))
    sink = GallerySink(
        os.environ["PEER_DATABASE_URL"], args.table, args.bucket, args.prefix, args.head_threads
    )
    deserializer = SingleObjectAvro(Path(args.schemas))
    clock: list[float] = []
    seen = {"events": 0, "past_end": 0}
    first: dict[tuple[str, int], int] = {}
    progress = [time.monotonic()]

    def in_range(value: Any) -> bool:
        """Counts each message of [start, end); one past its partition's end is not written."""
        if not clock:
            clock[:] = [_cpu_s(), time.monotonic()]
            progress[0] = clock[1]
        ctx = message_context()
        tp = (ctx.topic, ctx.partition)
        first.setdefault(tp, ctx.offset)
        if ctx.offset >= ends.get(tp, 0):
            seen["past_end"] += 1
            return False
        seen["events"] += 1
        return value is not None

    def on_message_processed(topic: str, partition: int, offset: int) -> None:
        if offset + 1 >= ends.get((topic, partition), 0):
            left.discard((topic, partition))
            if not left:
                app.stop()
        now = time.monotonic()
        if now - progress[0] >= 2.0:
            progress[0] = now
            print(f"  {args.name}: {seen['events']:,} events", file=sys.stderr, flush=True)

    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(kafka),
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_every=args.commit_every,
        consumer_extra_config={"fetch.wait.max.ms": args.fetch_wait_max_ms},
        loglevel="WARNING",
        auto_create_topics=False,
        state_dir=args.state_dir,
        on_message_processed=on_message_processed,
    )
    for topic in sorted({t for t, _ in ends}):
        sdf = app.dataframe(app.topic(topic, value_deserializer=deserializer))
        sdf = sdf.filter(in_range).apply(gallery)
        sdf.sink(sink)
    if left:
        app.run()
    cpu, seconds = (_cpu_s() - clock[0], time.monotonic() - clock[1]) if clock else (0.0, 0.0)
    sink.close()
    wrong = {f"{t}[{p}]": o for (t, p), o in first.items() if o != starts.get((t, p), 0)}
    if wrong or left:
        raise SystemExit(
            f"{args.name}: read from other offsets than asked ({wrong}) or did not reach "
            f"the end of {sorted(left)}"
        )
    return {
        "events": seen["events"],
        "past_end": seen["past_end"],
        **sink.totals,
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    """This program's peak resident memory: VmHWM, not ``ru_maxrss``, which Linux carries
    over ``exec`` from the parent that forked it (the suite's process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the phase's name, for progress lines")
    parser.add_argument("--group", required=True)
    parser.add_argument("--starts", required=True, help='JSON [["topic", partition, offset]]')
    parser.add_argument("--ends", required=True, help="JSON, as --starts")
    parser.add_argument("--schemas", required=True, help="the directory of the .avsc files")
    parser.add_argument("--table", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--head-threads", type=int, default=32)
    parser.add_argument("--commit-every", type=int, default=500)
    parser.add_argument("--fetch-wait-max-ms", type=int, default=100)
    parser.add_argument("--state-dir", required=True, help="quix's state directory (unused)")
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(parser.parse_args())), flush=True)
