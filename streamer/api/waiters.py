"""Requests waiting for their bulk to complete (``Prefer: wait=N``), on one connection.

Completion is found by whichever ``streamer serve`` leads the completion relay, maybe
in another process: it notifies ``COMPLETED_CHANNEL`` at the COMMIT that marks bulks
complete. Each process keeps one listening connection for all its waiters, so a
hundred waiting requests cost one connection, not a hundred, and no pooled
connection is held while a request waits. Notifications can be missed (the listener
reconnecting, a notification sent between a bulk's acknowledgment and its waiter's
registration), so while anyone waits the same connection also asks, once per
``sweep_s`` for all of them together, which of their bulks are complete.

The number of waiters is bounded: ``reserve`` refuses beyond ``max_waiters`` before
anything is published, and the caller answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from prometheus_client import Gauge

from streamer.runtime.database import converted
from streamer.runtime.settings import DatabaseSettings
from streamer.tracking.store import COMPLETED_CHANNEL, completed_of

__all__ = ["CompletionWaiters", "TooManyWaiters"]

log = logging.getLogger(__name__)


class TooManyWaiters(Exception):
    """Every waiting slot is taken."""


class CompletionWaiters:
    """``async with reserve(): ... await wait(bulk, timeout_s)`` -> whether the bulk completed."""

    def __init__(
        self,
        database: DatabaseSettings,
        *,
        max_waiters: int,
        sweep_s: float = 1.0,
        gauge: Gauge | None = None,
    ) -> None:
        self._database = database
        self._gauge = gauge
        self.max_waiters = max_waiters
        self.sweep_s = sweep_s
        self._reserved = 0
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def waiting(self) -> int:
        return sum(len(f) for f in self._waiting.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="completion-waiters")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=10)
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.cancel()
        await self._close()

    @contextlib.asynccontextmanager
    async def reserve(self) -> AsyncIterator[None]:
        """A waiting slot for one request, or ``TooManyWaiters``."""
        if self._reserved >= self.max_waiters:
            raise TooManyWaiters
        self._reserved += 1
        self._count()
        try:
            yield
        finally:
            self._reserved -= 1
            self._count()

    def _count(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self._reserved)

    async def wait(self, bulk_uuid: str, timeout_s: float) -> bool:
        """True once the bulk is complete, False when ``timeout_s`` passed first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(bulk_uuid, []).append(future)
        self._wake.set()  # the sweep looks at once: it may have completed already
        try:
            await asyncio.wait_for(future, timeout=max(0.0, timeout_s))
            return True
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            if self._stopping.is_set():
                return False
            raise
        finally:
            futures = self._waiting.get(bulk_uuid, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._waiting.pop(bulk_uuid, None)

    # -- the one connection -------------------------------------------------------------

    def _completed(self, bulk_uuids: list[str]) -> None:
        for bulk in bulk_uuids:
            for future in self._waiting.get(bulk, []):
                if not future.done():
                    future.set_result(None)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._completed([b for b in payload.split(",") if b])

    async def _connect(self) -> asyncpg.Connection:
        async with converted():
            conn = await asyncpg.connect(
                self._database.dsn, timeout=self._database.database_timeout_s
            )
            await conn.add_listener(COMPLETED_CHANNEL, self._notified)
        return conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._close()
                    self._conn = await self._connect()
                await self._sweep()
            except Exception as exc:  # noqa: BLE001 - the listener outlives any one failure
                log.warning("waiting for completions: %s; connecting again", exc)
                await self._close()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.sweep_s)

    async def _sweep(self) -> None:
        if not self._waiting or self._conn is None:
            return
        async with self._conn_lock:
            done = await completed_of(self._conn, list(self._waiting))
        self._completed(done)
