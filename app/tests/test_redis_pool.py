"""The Redis pool under a burst: more concurrent calls than pooled connections wait their
turn instead of failing (a failure here was a 503 on every authenticated request)."""

from __future__ import annotations

import asyncio

from koinonia.stores.client import create_redis


async def test_a_burst_larger_than_the_pool_waits_for_connections_instead_of_failing(
    make_settings,
):
    client = create_redis(make_settings(redis_max_connections=2))
    try:
        # BLPOP with a timeout holds its connection for a moment, so the 40 calls overlap.
        results = await asyncio.gather(
            *(client.blpop([f"koinonia-test-pool-{i}"], timeout=0.05) for i in range(40)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    assert results == [None] * 40


async def test_closing_the_client_closes_its_pool(make_settings):
    client = create_redis(make_settings())
    await client.ping()
    await client.aclose()
    assert client.auto_close_connection_pool is True
