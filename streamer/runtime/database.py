"""PostgreSQL access for the runtime and every job: one pool, one way in, errors converted once.

asyncpg errors become the streamer hierarchy here and nowhere else: connection
problems, timeouts, serialization failures and deadlocks are retriable
(``DatabaseUnavailable``); integrity and data errors belong to the data
(``DatabaseDataError``) and are isolated to their key by the checkpoint. Commands
that run once (status, export, replay) use ``connect``; workers use ``Database``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from streamer.runtime.errors import DatabaseDataError, DatabaseUnavailable
from streamer.runtime.settings import DatabaseSettings

__all__ = ["Database", "connect", "convert_error", "converted"]


def convert_error(exc: BaseException) -> Exception:
    """Map an asyncpg/OS error onto the streamer hierarchy."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        return DatabaseDataError(f"{type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        asyncpg.SerializationError
        | asyncpg.DeadlockDetectedError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.TooManyConnectionsError
        | asyncpg.QueryCanceledError
        | ConnectionError
        | OSError
        | asyncio.TimeoutError,
    ):
        return DatabaseUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        # Anything else from the server (e.g. an operator dropped a table) is not the data's fault
        # and may be fixed by a human; retrying keeps the events instead of dead-lettering them.
        return DatabaseUnavailable(f"PostgreSQL error: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


@asynccontextmanager
async def converted() -> AsyncIterator[None]:
    """Run a block with asyncpg's errors converted into streamer's."""
    try:
        yield
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise convert_error(exc) from exc


@asynccontextmanager
async def connect(dsn: str, *, timeout_s: float = 10.0) -> AsyncIterator[asyncpg.Connection]:
    """One connection for one command; errors inside the block are converted too."""
    async with converted():
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        async with converted():
            yield conn
    finally:
        await conn.close()


async def _session_kept(_conn: asyncpg.Connection) -> None:
    """A released connection's session is left as it is (asyncpg still rolls back an open
    transaction and drops listeners before this is called)."""


class Database:
    """A pool shared by the runtime (offsets) and the job's handler (its own tables).

    ``session_state=False``: no user of this pool changes session state (no ``SET``,
    ``LISTEN``, session advisory lock or cursor outside a transaction), so a released
    connection skips asyncpg's reset query (``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL``), a round trip per release: the API's pool, two releases a
    request."""

    def __init__(self, settings: DatabaseSettings, *, session_state: bool = True) -> None:
        self._session_state = session_state
        self._dsn = settings.dsn
        self._pool_size = settings.database_pool_size
        self.timeout_s = settings.database_timeout_s
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        async with converted():
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self.timeout_s,
                command_timeout=self.timeout_s * 3,
                reset=None if self._session_state else _session_kept,
            )

    async def stop(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=self.timeout_s)
            except TimeoutError:
                pool.terminate()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("database pool is not started")
        return self._pool

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with converted(), self.pool.acquire(timeout=self.timeout_s) as conn:
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def ping(self) -> None:
        async with self.acquire() as conn:
            await conn.fetchval("SELECT 1")
