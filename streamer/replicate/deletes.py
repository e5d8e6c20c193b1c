"""Deleting what no gallery uses any more, after the commit that released it.

Paths reach ``deleting`` in a committed transaction (the batch that dropped their last
reference, or ``verify --repair``). Each is then deleted at the destination under its
exclusive advisory lock and marked ``absent`` in the same short transaction: a worker
that dies in between leaves it ``deleting``, and the next round deletes it again (a
delete is idempotent). A path some batch is copying holds a shared lock and is skipped
this round, not waited for.
"""

from __future__ import annotations

import asyncio
from functools import partial

from streamer.replicate.copier import Call, Copier
from streamer.replicate.repository import ReplicaRepository
from streamer.runtime.database import Database

__all__ = ["DELETE_CHUNK", "take_deletes"]

DELETE_CHUNK = 200


async def take_deletes(
    database: Database, repo: ReplicaRepository, copier: Copier, call: Call
) -> tuple[int, int]:
    """Delete one chunk of pending paths; returns (deleted, still pending)."""
    errors: list[BaseException] = []
    async with database.acquire() as conn, conn.transaction():
        pending = await repo.pending_deletes(conn, DELETE_CHUNK)
        locked = await repo.try_lock_exclusive(conn, pending) if pending else []
        rows = await repo.objects(conn, locked)
        todo = [p for p in locked if p in rows and rows[p].state == "deleting"]
        results = await asyncio.gather(
            *(call("replica", partial(copier.delete, p)) for p in todo), return_exceptions=True
        )
        done = [p for p, r in zip(todo, results, strict=True) if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        await repo.finish_deletes(conn, done)
        left = await repo.count_pending(conn)
    copier.metrics.pending_deletes.set(left)
    if errors:
        raise errors[0]
    return len(done), left
