"""Distributed locks against the real test Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from redis.asyncio import Redis

from koinonia.stores.locks import LockService


@pytest.fixture
def prefix() -> str:
    # A prefix per test so that locks of one test never show up in another's listing.
    return f"test-lock-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def locks(redis: Redis, prefix: str) -> LockService:
    return LockService(redis, prefix=prefix, holder="server-a:1")


@pytest.fixture
def other_server(redis: Redis, prefix: str) -> LockService:
    return LockService(redis, prefix=prefix, holder="server-b:2")


async def test_acquire_sets_key_with_token_and_default_ttl(locks: LockService, redis: Redis):
    lock = await locks.acquire("nightly")

    assert lock is not None
    assert await redis.get(locks.key("nightly")) == lock.token
    assert lock.token.startswith("server-a:1:")
    assert 29_000 < await redis.pttl(locks.key("nightly")) <= 30_000


async def test_second_acquire_is_refused_while_held(locks: LockService, other_server):
    first = await locks.acquire("nightly")
    assert first is not None
    assert await other_server.acquire("nightly") is None
    assert await other_server.is_held("nightly")
    assert await other_server.holder_of("nightly") == "server-a:1"


async def test_tokens_are_unique_per_acquisition(locks: LockService):
    first = await locks.acquire("a")
    second = await locks.acquire("b")
    assert first is not None and second is not None
    assert first.token != second.token


async def test_release_by_non_holder_is_refused(locks: LockService, other_server, redis):
    mine = await locks.acquire("nightly")
    assert mine is not None

    # Another server that guesses a token, or holds an old one, cannot delete the lock.
    assert not await other_server.release_token("nightly", "server-b:2:not-the-token")
    assert await redis.get(locks.key("nightly")) == mine.token

    assert await locks.release(mine)
    assert not await locks.is_held("nightly")


async def test_expired_lock_taken_over_cannot_be_released_by_old_holder(
    locks: LockService, other_server, redis
):
    old = await locks.acquire("report", ttl_ms=100)
    assert old is not None
    await asyncio.sleep(0.2)
    new = await other_server.acquire("report")
    assert new is not None

    assert not await locks.release(old)  # the check-and-delete sees another token
    assert await redis.get(locks.key("report")) == new.token


async def test_extend_resets_ttl_only_for_holder(locks: LockService, redis):
    lock = await locks.acquire("long", ttl_ms=1_000)
    assert lock is not None
    assert await locks.extend(lock, ttl_ms=60_000)
    assert await redis.pttl(locks.key("long")) > 50_000

    await redis.set(locks.key("long"), "someone-else:token", px=60_000)
    assert not await locks.extend(lock)


async def test_long_job_keeps_its_lock_alive(locks: LockService, other_server, redis):
    async with locks.hold("slow", ttl_ms=300) as lock:
        assert lock is not None
        await asyncio.sleep(0.9)  # three TTLs: without extension the lock would be gone
        assert await redis.get(locks.key("slow")) == lock.token
        assert not lock.lost.is_set()
        assert await other_server.acquire("slow") is None
    assert not await locks.is_held("slow")


async def test_lost_lock_is_flagged(locks: LockService, redis):
    async with locks.hold("fragile", ttl_ms=300) as lock:
        assert lock is not None
        await redis.delete(locks.key("fragile"))
        await asyncio.wait_for(lock.lost.wait(), timeout=2)


async def test_with_lock_runs_work_and_releases(locks: LockService):
    outcome = await locks.with_lock("job", lambda: asyncio.sleep(0, result="done"))
    assert outcome.ran and outcome.result == "done"
    assert not await locks.is_held("job")


async def test_with_lock_releases_when_work_raises(locks: LockService):
    async def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await locks.with_lock("job", boom)
    assert not await locks.is_held("job")


async def test_with_lock_skips_and_logs_when_held_elsewhere(
    locks: LockService, other_server, caplog
):
    held = await other_server.acquire("recurring")
    assert held is not None
    calls = []

    async def work() -> None:
        calls.append(1)

    with caplog.at_level(logging.INFO, logger="koinonia.stores.locks"):
        outcome = await locks.with_lock("recurring", work)

    assert not outcome.ran
    assert outcome.holder == "server-b:2"
    assert calls == []
    assert "skipping recurring: lock held by server-b:2" in caplog.text


async def test_concurrent_with_lock_runs_once(locks: LockService, other_server):
    runs = []

    async def work() -> None:
        runs.append(1)
        await asyncio.sleep(0.2)

    outcomes = await asyncio.gather(
        locks.with_lock("race", work), other_server.with_lock("race", work)
    )
    assert sorted(o.ran for o in outcomes) == [False, True]
    assert runs == [1]


async def test_force_release_and_list_active(locks: LockService, other_server):
    await locks.acquire("alpha", ttl_ms=60_000)
    await other_server.acquire("beta", ttl_ms=10_000)

    active = await locks.list_active()
    assert [(a["name"], a["holder"]) for a in active] == [
        ("alpha", "server-a:1"),
        ("beta", "server-b:2"),
    ]
    assert 50_000 < active[0]["ttlMs"] <= 60_000
    assert 0 < active[1]["ttlMs"] <= 10_000

    assert await locks.force_release("beta")
    assert not await locks.force_release("beta")
    assert [a["name"] for a in await locks.list_active()] == ["alpha"]
