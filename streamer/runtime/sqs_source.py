"""An SQS queue as a source: no partitions, no offsets, messages deleted after the commit.

A poll long-polls up to ten messages (SQS's most). The batch goes through the same
pipeline and checkpoint as a Kafka batch; only once it committed are its messages
deleted from the queue. A crash or an outage before the delete leaves them in the queue:
they come back after their visibility timeout and are applied again, so a job reading a
queue must apply a message twice to the same effect (the object index takes only newer
records). While the worker waits out an outage it receives nothing, and the messages in
hand are kept hidden for as long as the wait (``ChangeMessageVisibility``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from botocore.exceptions import BotoCoreError, ClientError
from confluent_kafka import Message

from streamer.errors import DependencyUnavailable
from streamer.runtime.checkpoint import NoOffsets, TransactionSource
from streamer.runtime.handler import Batch, TopicPartition
from streamer.runtime.source import SourceContext

__all__ = ["QueueUnavailable", "SqsMessage", "SqsSource"]

log = logging.getLogger(__name__)

_MAX_RECEIVE = 10  # SQS's own bound per ReceiveMessage


class QueueUnavailable(DependencyUnavailable):
    dependency = "sqs"


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


class SqsSource:
    """``check``: the job's own look at the queue before the first receive (that it exists,
    that it takes these credentials), raising a ``ConfigError`` that names its settings."""

    def __init__(
        self,
        client: Any,
        url: str,
        *,
        wait_s: float,
        visibility_s: int,
        check: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.check = check
        self.url = url
        self.queue = url.rstrip("/").rsplit("/", 1)[-1]
        self.wait_s = wait_s
        self.visibility_s = visibility_s
        self._store: NoOffsets | None = None
        self._offset = 0  # numbers the messages received, for logs and dead letters
        self._paused = False
        self._in_hand: list[SqsMessage] = []

    @property
    def store(self) -> TransactionSource:
        assert self._store is not None, "SqsSource.attach() was not called"
        return self._store

    @property
    def generation(self) -> int:
        return 0  # nothing is ever assigned or revoked

    @property
    def paused(self) -> bool:
        return self._paused

    def attach(self, ctx: SourceContext) -> None:
        self._store = NoOffsets(ctx.database)

    async def start(self, topics: Sequence[str]) -> None:
        if self.check is not None:
            await self.check()

    async def close(self, timeout_s: float) -> None:
        return None

    async def _sqs(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(**kwargs))
        except (BotoCoreError, ClientError) as exc:
            raise QueueUnavailable(f"SQS {self.queue}: {type(exc).__name__}: {exc}") from exc

    async def poll(self, max_messages: int, wait_s: float) -> Batch:
        if self._paused:
            await asyncio.sleep(wait_s)
            return Batch(())
        received = await self._sqs(
            self.client.receive_message,
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(_MAX_RECEIVE, max_messages)),
            WaitTimeSeconds=int(self.wait_s),
            VisibilityTimeout=self.visibility_s,
            AttributeNames=["SentTimestamp"],
        )
        messages = []
        for raw in received.get("Messages") or []:
            messages.append(SqsMessage(self.queue, self._offset, raw))
            self._offset += 1
        self._in_hand = messages
        return Batch(cast(Any, messages))

    def owns(self, msg: Message) -> bool:
        return True

    def positions(self, batch: Batch) -> Mapping[TopicPartition, tuple[int, int]]:
        return {}

    async def committed(self, batch: Batch) -> None:
        messages = cast(list[SqsMessage], list(batch.messages))
        entries = [{"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(messages)]
        self._in_hand = []
        if not entries:
            return
        try:
            result = await self._sqs(
                self.client.delete_message_batch, QueueUrl=self.url, Entries=entries
            )
        except QueueUnavailable as exc:
            # Committed already: a message not deleted comes back and changes nothing.
            log.warning("SQS messages not deleted (they come back, to no effect): %s", exc)
            return
        failed = result.get("Failed") or []
        if failed:
            log.warning("%d SQS messages not deleted: %s", len(failed), failed[:3])

    def fenced(self, partitions: Sequence[TopicPartition]) -> None:
        return None  # a queue assigns nothing, so nothing can be claimed away

    async def pause(self, paused: bool) -> None:
        self._paused = paused

    async def idle(self, seconds: float) -> None:
        """Receive nothing; keep the messages in hand hidden as long as the wait lasts, so
        another worker does not apply them meanwhile (it would be harmless, but wasted)."""
        if self._in_hand:
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": m.receipt,
                    "VisibilityTimeout": int(max(self.visibility_s, seconds + self.visibility_s)),
                }
                for i, m in enumerate(self._in_hand)
            ]
            try:
                await self._sqs(
                    self.client.change_message_visibility_batch, QueueUrl=self.url, Entries=entries
                )
            except QueueUnavailable as exc:
                log.debug("could not extend the visibility of the messages in hand: %s", exc)
        await asyncio.sleep(seconds)

    async def lag(self) -> dict[TopicPartition, int]:
        return {}

    def not_ready(self) -> list[str]:
        return []
