"""The runtime's pool on a real PostgreSQL: what a released connection keeps and loses."""

from __future__ import annotations

import pytest

from streamer.runtime.database import Database

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("session_state", [True, False])
async def test_a_connection_released_inside_a_transaction_comes_back_rolled_back(
    make_settings, session_state: bool
) -> None:
    """Without the reset query (the API's pool) an open transaction is still rolled back
    and its writes are gone; with it, the session's settings are reset too."""
    settings = make_settings()
    pool_settings = settings.database.model_copy(update={"database_pool_size": 1})
    async with Database(pool_settings, session_state=session_state) as db:
        async with db.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS kept (n int)")
            await conn.execute("SET application_name = 'changed'")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO kept VALUES (1)")
        async with db.acquire() as conn:  # the same connection (pool of one)
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
            name = await conn.fetchval("SHOW application_name")
    assert (name == "changed") is not session_state
