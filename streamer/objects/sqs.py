"""S3's notifications from an SQS queue (``STREAMER_OBJECTS_SQS_URL``), through the same
handler and the same checkpoint as the Kafka source.

A round: long-poll up to ten messages; the handler prepares them as one batch; the
checkpoint writes the index rows, publishes the re-checks and dead letters, and commits;
only then are the messages deleted from the queue. A crash or an outage before the
delete leaves them in the queue: they come back after their visibility timeout and are
applied again, which changes nothing (the index takes only newer records, re-checks
carry derived ids). SQS has no offsets: the batch's transaction advances none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry

from streamer.errors import ConfigError, DependencyUnavailable
from streamer.objects.handler import ObjectsHandler
from streamer.runtime import faults
from streamer.runtime.checkpoint import Checkpoint, Transaction
from streamer.runtime.connection import check_broker_async
from streamer.runtime.database import Database, converted
from streamer.runtime.errors import BrokerUnavailable
from streamer.runtime.handler import Batch, start_handler
from streamer.runtime.health import HealthServer, Readiness
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.runtime.retention import Pruning, start_pruner, stop_pruner
from streamer.storage.errors import error_code, refusal

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = ["SqsMessage", "SqsSource", "make_sqs_client"]

log = logging.getLogger(__name__)


class SqsMessage:
    """An SQS message with the face of a Kafka message, as handlers and dead letters read one."""

    def __init__(self, queue: str, offset: int, raw: Mapping[str, Any]) -> None:
        self._topic = f"sqs:{queue}"
        self._offset = offset
        self._body = str(raw.get("Body", "")).encode("utf-8")
        self.message_id = str(raw.get("MessageId", ""))
        self.receipt = str(raw.get("ReceiptHandle", ""))
        sent = (raw.get("Attributes") or {}).get("SentTimestamp")
        self._sent_ms = int(sent) if sent and str(sent).isdigit() else 0

    def value(self) -> bytes:
        return self._body

    def key(self) -> bytes:
        return self.message_id.encode()

    def headers(self) -> list[tuple[str, bytes]]:
        return [("sqs.message_id", self.message_id.encode())]

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._sent_ms)


def make_sqs_client(queue_url: str, settings: Settings) -> Any:
    """A boto3 SQS client for the queue's own endpoint (AWS's regional one, or moto's)."""
    parts = urlsplit(queue_url)
    s3 = settings.s3
    secret = s3.s3_secret_access_key
    host = parts.hostname or ""
    region = host.split(".")[1] if host.startswith("sqs.") and host.count(".") >= 3 else None
    return boto3.client(
        "sqs",
        endpoint_url=f"{parts.scheme}://{parts.netloc}",
        region_name=region or s3.s3_region,
        aws_access_key_id=s3.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=30),
    )


class _NoOffsets:
    """The checkpoint's transaction source for a queue: a transaction, no offsets to fence."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with converted(), self.database.acquire() as conn, conn.transaction():
            yield Transaction(conn)

    async def advance(
        self, tx: Transaction, offsets: Mapping[tuple[str, int], tuple[int, int]]
    ) -> None:
        return None


@dataclass
class SqsStats:
    rounds: int = 0
    messages: int = 0
    deleted: int = 0
    failed_rounds: int = 0
    errors: list[str] = field(default_factory=list)


class SqsSource:
    """``streamer objects consume`` when ``STREAMER_OBJECTS_SQS_URL`` is set."""

    def __init__(
        self,
        settings: Settings,
        handler: ObjectsHandler,
        *,
        registry: CollectorRegistry | None = None,
        client: Any = None,
        install_signal_handlers: bool = True,
        pruning: Pruning | None = None,
    ) -> None:
        url = settings.objects.objects_sqs_url
        if not url:
            raise ValueError("STREAMER_OBJECTS_SQS_URL is not set")
        self.url = url
        self.settings = settings
        self.handler = handler
        self.registry = registry if registry is not None else new_registry()
        self.client = client if client is not None else make_sqs_client(url, settings)
        self.database = Database(settings.database)
        self.publisher = Publisher(settings.kafka)
        runtime = settings.runtime
        self.checkpoint = Checkpoint(
            _NoOffsets(self.database),
            self.publisher,
            dlq_topic=runtime.dlq_topic,
            dlq_max_value_bytes=runtime.dlq_max_value_bytes,
            delivery_timeout_s=settings.kafka.delivery_timeout_ms / 1000,
        )
        self.queue = url.rstrip("/").rsplit("/", 1)[-1]
        self.stats = SqsStats()
        self._offset = 0
        self._install_signals = install_signal_handlers
        self.pruning = pruning
        self._heartbeat = time.monotonic()
        self._healthy = True

    async def _sqs(self, fn: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, lambda: fn(**kwargs))
        except (BotoCoreError, ClientError) as exc:
            raise DependencyUnavailable(f"SQS: {type(exc).__name__}: {exc}") from exc

    async def _call(self, _dependency: str, fn: Any) -> Any:
        return await fn()

    async def run(self, stop: asyncio.Event | None = None) -> SqsStats:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if self._install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        faults.announce()
        await self._check_dependencies()
        health = self._start_health()
        if not await self._database_started(stop):
            if health is not None:
                health.stop()
            return self.stats
        self.publisher.start()
        await start_handler(
            self.handler, registry=self.registry, database=self.database, call=self._call
        )
        pruner = start_pruner(self.pruning, self.database, self.registry)
        backoff = self.settings.runtime.circuit_reset_timeout_s
        try:
            while not stop.is_set():
                try:
                    await self.round(stop)
                    self._healthy = True
                except DependencyUnavailable as exc:
                    # Nothing was deleted: the messages come back after their visibility timeout.
                    self.stats.failed_rounds += 1
                    self.stats.errors.append(str(exc))
                    self._healthy = False
                    log.warning("objects: round failed, retrying: %s", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=backoff)
        finally:
            await stop_pruner(pruner)
            await self.handler.stop()
            self.publisher.close()
            await self.database.stop()
            if health is not None:
                health.stop()
        return self.stats

    async def _check_dependencies(self) -> None:
        """The queue and the broker, with the credentials this source will use: a queue that
        does not exist or refused credentials end the start (``ConfigError``); one that does
        not answer yet is waited for like any outage."""
        try:
            await check_broker_async(self.settings.kafka)
        except BrokerUnavailable as exc:
            log.warning("%s; re-checks are published when it answers", exc)
        try:
            await self._sqs(
                self.client.get_queue_attributes, QueueUrl=self.url, AttributeNames=["QueueArn"]
            )
        except DependencyUnavailable as exc:
            cause = exc.__cause__
            code = error_code(cause) if isinstance(cause, ClientError) else ""
            if "NonExistentQueue" in code or code == "QueueDoesNotExist":
                raise ConfigError(
                    f"the SQS queue {self.queue!r} does not exist ({code}): check "
                    "STREAMER_OBJECTS_SQS_URL"
                ) from exc
            found = refusal(cause) if cause is not None else None
            if found is not None or code in ("InvalidClientTokenId", "UnrecognizedClientException"):
                raise ConfigError(
                    f"SQS refused these credentials for queue {self.queue!r} ({code or '403'}): "
                    "check STREAMER_S3_ACCESS_KEY_ID and STREAMER_S3_SECRET_ACCESS_KEY (or the "
                    "AWS credential chain) and the queue's policy"
                ) from exc
            log.warning("%s; rounds wait for the queue to answer", exc)

    async def _database_started(self, stop: asyncio.Event) -> bool:
        """Wait for PostgreSQL as the Kafka runner does: a worker started while it restarts
        waits for it instead of exiting (False: stopped before it answered)."""
        while not stop.is_set():
            try:
                await self.database.start()
                return True
            except DependencyUnavailable as exc:
                self._healthy = False
                log.warning("PostgreSQL not reachable yet, retrying: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), timeout=self.settings.runtime.circuit_reset_timeout_s
                    )
        return False

    async def round(self, stop: asyncio.Event | None = None) -> int:
        """Receive, apply and delete one batch; returns how many messages it held."""
        o = self.settings.objects
        self._heartbeat = time.monotonic()
        received = await self._sqs(
            self.client.receive_message,
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=o.objects_sqs_wait_s,
            VisibilityTimeout=o.objects_sqs_visibility_s,
            AttributeNames=["SentTimestamp"],
        )
        raw = received.get("Messages") or []
        if not raw:
            return 0
        messages = []
        for m in raw:
            messages.append(SqsMessage(self.queue, self._offset, m))
            self._offset += 1
        batch = Batch(cast(Any, messages))
        plan = await self.handler.plan(await self.handler.prepare(batch))
        epochs = dict.fromkeys(batch.next_offsets, 0)
        output = await self.checkpoint.commit(batch, epochs, self.handler, plan)
        self.handler.committed(plan, output)
        entries = [{"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(messages)]
        result = await self._sqs(
            self.client.delete_message_batch, QueueUrl=self.url, Entries=entries
        )
        failed = result.get("Failed") or []
        if failed:
            # Committed already: a message not deleted comes back and changes nothing.
            log.warning("objects: %d SQS messages not deleted: %s", len(failed), failed[:3])
        self.stats.rounds += 1
        self.stats.messages += len(messages)
        self.stats.deleted += len(messages) - len(failed)
        return len(messages)

    def _start_health(self) -> HealthServer | None:
        s = self.settings.runtime
        if not s.metrics_port:
            return None
        health = HealthServer(
            self.registry,
            host=s.metrics_host,
            port=s.metrics_port,
            liveness=lambda: time.monotonic() - self._heartbeat < 120,
            readiness=lambda: Readiness(
                self._healthy, () if self._healthy else ("the last SQS round failed",)
            ),
        )
        health.start()
        return health
