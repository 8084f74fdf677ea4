"""What a request meets while the database leader changes, answered 503 with Retry-After.

A Patroni failover or switchover shows the app two errors besides a refused connection:
the old leader's PostgreSQL ends its sessions ("terminating connection due to administrator
command", SQLSTATE 57P01) and, until HAProxy has moved, a write can reach a node that is now
a replica ("cannot execute ... in a read-only transaction", 25006). Both pass in seconds;
neither is a bug of the request. Each is made here on the real server, at the racy point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import psycopg
import pytest

from koinonia.errors import dependency_unavailable
from koinonia.services import auth
from tests.pause import Pause
from tests.servers import DB_NAME, DB_USER
from tests.test_health import pgbouncer_admin

pytestmark = pytest.mark.asyncio

REGISTER = "/api/auth/register"


def _registration(email: str) -> dict[str, str]:
    return {"churchName": "Failover Chapel", "email": email, "password": "long-enough-password"}


def _assert_unavailable(status: int, body: dict, headers) -> None:
    assert status == 503, body
    assert body["error"]["code"] == "service_unavailable"
    assert headers["Retry-After"].isdigit()


@asynccontextmanager
async def superuser(servers) -> AsyncIterator[psycopg.AsyncConnection]:
    conn = await psycopg.AsyncConnection.connect(
        servers.postgres.superuser_dsn(DB_NAME), autocommit=True
    )
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_request_whose_session_the_old_leader_ends_answers_503_with_retry_after(
    client, servers, monkeypatch
):
    """Paused at the racy point: the registration holds before its transaction while a table
    lock is taken here, so its INSERT waits on the server; then its backend is terminated, as
    a demoting leader terminates every session."""
    pause = Pause()
    monkeypatch.setattr(auth, "hash_password", pause.before(auth.hash_password))
    async with superuser(servers) as admin:
        request = asyncio.create_task(
            client.post(REGISTER, json=_registration("ended@example.org"))
        )
        await asyncio.wait_for(pause.reached.wait(), 20)
        await admin.execute("BEGIN")
        await admin.execute("LOCK TABLE church IN ACCESS EXCLUSIVE MODE")
        pause.release.set()
        waiting: list[int] = []
        async with asyncio.timeout(20):
            while not waiting:
                rows = await (
                    await admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s"
                        " AND wait_event_type = 'Lock'",
                        (DB_NAME, DB_USER),
                    )
                ).fetchall()
                waiting = [row[0] for row in rows]
                await asyncio.sleep(0.05)
        for pid in waiting:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await admin.execute("ROLLBACK")
        response = await asyncio.wait_for(request, 30)
    _assert_unavailable(response.status_code, await response.get_json(), response.headers)
    # The next request gets a fresh server connection and succeeds.
    again = await client.post(REGISTER, json=_registration("ended@example.org"))
    assert again.status_code == 201, await again.get_json()


async def test_a_write_that_reaches_a_demoted_leader_answers_503_with_retry_after(client, servers):
    """A replica refuses writes: the database made read-only for new sessions, and PgBouncer's
    server connections replaced so the request meets it."""
    async with superuser(servers) as admin, pgbouncer_admin(servers) as bouncer:
        await admin.execute(f"ALTER DATABASE {DB_NAME} SET default_transaction_read_only = on")
        await bouncer.execute(f"KILL {DB_NAME}")
        await bouncer.execute(f"RESUME {DB_NAME}")
        try:
            response = await asyncio.wait_for(
                client.post(REGISTER, json=_registration("replica@example.org")), 30
            )
            _assert_unavailable(response.status_code, await response.get_json(), response.headers)
        finally:
            await admin.execute(f"ALTER DATABASE {DB_NAME} RESET default_transaction_read_only")
            await bouncer.execute(f"KILL {DB_NAME}")
            await bouncer.execute(f"RESUME {DB_NAME}")
    again = await client.post(REGISTER, json=_registration("replica@example.org"))
    assert again.status_code == 201, await again.get_json()


async def test_a_direct_session_the_old_leader_ends_counts_as_unavailable(servers):
    """Without PgBouncer between (migrations, or app_database_via_pgbouncer off) the app sees
    PostgreSQL's own "terminating connection due to administrator command" (57P01)."""
    direct = await asyncpg.connect(servers.postgres.url)
    try:
        query = asyncio.create_task(direct.execute("SELECT pg_sleep(60)"))
        async with superuser(servers) as admin:
            terminated = False
            async with asyncio.timeout(20):
                while not terminated:
                    row = await (
                        await admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'"
                        )
                    ).fetchone()
                    terminated = bool(row and row[0])
                    await asyncio.sleep(0.05)
        with pytest.raises(asyncpg.PostgresError) as ended:
            await asyncio.wait_for(query, 20)
        assert "terminating connection due to administrator command" in str(ended.value)
        assert dependency_unavailable(ended.value)
    finally:
        direct.terminate()
