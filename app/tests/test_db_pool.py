"""The app's database pool under a burst larger than itself, against real PgBouncer."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest
from tortoise import connections

from koinonia.db import CONNECTION_NAME


async def asks_and_grants(pool: asyncpg.Pool, tasks: int, rounds: int) -> tuple[list, list]:
    """`tasks` requests, each `rounds` times: ask for a connection, run a statement, give it
    back. Returns the order in which connections were asked for and the order granted."""
    tickets = itertools.count()
    asked: list[int] = []
    granted: list[int] = []

    async def request() -> None:
        for _ in range(rounds):
            ticket = next(tickets)
            asked.append(ticket)
            connection = await pool.acquire()
            granted.append(ticket)
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await pool.release(connection)

    await asyncio.gather(*(request() for _ in range(tasks)))
    return asked, granted


async def open_pool():
    client = connections.get(CONNECTION_NAME)
    await client.execute_query("SELECT 1")  # Tortoise opens its pool on first use
    pool = client._pool
    # Every connection open first: opening one takes a while, which would reorder the grants.
    opened = [await pool.acquire() for _ in range(pool.get_max_size())]
    for connection in opened:
        await pool.release(connection)
    return pool


async def test_requests_get_database_connections_in_the_order_they_asked_for_them(app):
    # asyncpg's own pool lets a request that asks while a released connection waits for
    # its woken waiter take it first: two runs of this test
    # without the fair pool: 261 and 296 of 400 requests overtook an earlier one.
    pool = await open_pool()
    asked, granted = await asks_and_grants(pool, tasks=4 * pool.get_max_size(), rounds=10)
    overtakers = sum(
        1 for i, ticket in enumerate(granted) if any(t < ticket for t in granted[i + 1 :])
    )
    assert granted == asked, f"{overtakers} of {len(granted)} requests overtook an earlier one"


async def test_a_request_that_gave_up_waiting_leaves_every_connection_to_the_others(app):
    pool = await open_pool()
    size = pool.get_max_size()
    held = [await pool.acquire() for _ in range(size)]
    with pytest.raises(TimeoutError):
        await pool.acquire(timeout=0.2)
    for connection in held:
        await pool.release(connection)
    again = [await pool.acquire(timeout=5) for _ in range(size)]
    for connection in again:
        await pool.release(connection)
