"""``Idempotency-Key`` on the intake routes: a retried request is answered, not taken again.

The first request with a key claims it (a row in ``idempotency_keys``, state ``taking``)
before anything is published. When it was taken in (answered 202), its answer is kept;
a retry with the same key and the same request gets that answer back, and nothing is
published again. The same key with another body (or another ``request_id``) is refused
with 422: it names another request. A retry while the first is still being taken in
gets 409 with ``Retry-After``. An answer that took nothing in (503: the broker or the
database was down, or some items were not acknowledged) is not kept: the retry runs
anew, which is safe (a re-sent item is applied once, by its version).

Keys are scoped per token (its reference, never the token) and per route. A claim left
``taking`` by a process that died is taken over after ``STALE_CLAIM_S``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from streamer.api.problems import RETRY_AFTER_S, ApiError
from streamer.runtime.database import Database

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "STALE_CLAIM_S",
    "Claim",
    "claim",
    "fingerprint",
    "forget",
    "remember",
]

# Printable ASCII, as the IETF draft's sf-string allows (the quotes are optional here).
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
STALE_CLAIM_S = 300


@dataclass(frozen=True)
class Claim:
    """``answer`` is None when this request claimed the key and must be taken in."""

    principal: str
    route: str
    key: str
    status_code: int | None = None
    answer: dict[str, Any] | None = None


def fingerprint(route: str, query: str, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (route.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


_CLAIM = """
INSERT INTO idempotency_keys (principal, route, key, fingerprint, state)
VALUES ($1, $2, $3, $4, 'taking')
ON CONFLICT (principal, route, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, state = 'taking', status_code = NULL,
        answer = NULL, created_at = now()
    WHERE idempotency_keys.state = 'taking'
      AND idempotency_keys.created_at < now() - make_interval(secs => $5)
RETURNING key
"""


async def claim(
    database: Database, *, principal: str, route: str, key: str, print_: bytes
) -> Claim:
    """Claim the key for this request, or the kept answer of its first use."""
    async with database.acquire() as conn:
        claimed = await conn.fetchval(_CLAIM, principal, route, key, print_, STALE_CLAIM_S)
        if claimed is not None:
            return Claim(principal, route, key)
        row = await conn.fetchrow(
            "SELECT fingerprint, state, status_code, answer FROM idempotency_keys"
            " WHERE principal = $1 AND route = $2 AND key = $3",
            principal,
            route,
            key,
        )
    if row is None:  # forgotten between the two statements: take it again
        return await claim(database, principal=principal, route=route, key=key, print_=print_)
    if bytes(row["fingerprint"]) != print_:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request (another body or request_id); "
            "use a new key for a new request",
        )
    if row["state"] != "done":
        raise ApiError(
            409,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being taken in; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return Claim(principal, route, key, row["status_code"], json.loads(row["answer"]))


async def remember(
    database: Database, claimed: Claim, status_code: int, answer: dict[str, Any]
) -> None:
    async with database.acquire() as conn:
        await conn.execute(
            "UPDATE idempotency_keys SET state = 'done', status_code = $4, answer = $5"
            " WHERE principal = $1 AND route = $2 AND key = $3",
            claimed.principal,
            claimed.route,
            claimed.key,
            status_code,
            json.dumps(answer),
        )


async def forget(database: Database, claimed: Claim) -> None:
    """The request took nothing in: its retry is a new attempt."""
    async with database.acquire() as conn:
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE principal = $1 AND route = $2 AND key = $3"
            " AND state = 'taking'",
            claimed.principal,
            claimed.route,
            claimed.key,
        )
