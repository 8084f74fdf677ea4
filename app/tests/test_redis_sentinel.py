"""Redis through Sentinel: the clients follow a failover, and a master that refuses writes
(NOREPLICAS) or cannot be found is "unavailable" (503 with Retry-After), never a 500.

Real servers on loopback: a master, a replica and three Sentinels (tests/sentinel_servers.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from koinonia.errors import dependency_unavailable
from koinonia.services.queue import create_queue
from koinonia.stores.client import create_redis, failover_retry
from tests.conftest import app_using_redis
from tests.sentinel_servers import MASTER_NAME, SENTINEL_PASSWORD, ReplicatedRedis


@pytest.fixture
def replicated_redis(tmp_path) -> Iterator[ReplicatedRedis]:
    servers = ReplicatedRedis(tmp_path / "replicated")
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def _sentinel_settings(replicated: ReplicatedRedis, **more: object) -> dict[str, object]:
    return {
        # Host and port are the Sentinels' to name; the URL gives the database (and user).
        "redis_url": "redis://sentinel-names-the-host:1/0",
        "redis_sentinels": replicated.sentinels,
        "redis_sentinel_master": MASTER_NAME,
        "redis_sentinel_password": SecretStr(SENTINEL_PASSWORD),
        **more,
    }


async def _until(check: Callable[[], Awaitable[bool]], bound: float, what: str) -> float:
    """Poll ``check`` until true, at most ``bound`` seconds; the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > bound:
            raise AssertionError(f"{what}: not within {bound} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _sentinels_see_the_replica(sentinel: Redis) -> bool:
    replicas = await sentinel.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
    return any(entry.get("flags") == "slave" for entry in replicas)


async def _port_of(client: Redis) -> int:
    return int((await client.info("server"))["tcp_port"])


def test_the_failover_retry_budget_waits_about_ten_seconds_with_capped_backoff():
    retry = failover_retry(10.0)
    backoff = retry._backoff
    waits = [backoff.compute(failure) for failure in range(1, retry._retries + 1)]
    assert 10.0 <= sum(waits) < 11.0
    assert waits[0] < 0.2 and max(waits) == 1.0  # quick first, then at most a second apart


async def test_clients_follow_a_planned_sentinel_failover_without_a_failed_or_lost_write(
    make_settings, replicated_redis
):
    settings = make_settings(**_sentinel_settings(replicated_redis))
    master = Redis(port=replicated_redis.master_port, decode_responses=True)
    replica = Redis(port=replicated_redis.replica_port, decode_responses=True)
    sentinel = Redis(
        port=replicated_redis.sentinel_ports[0], password=SENTINEL_PASSWORD, decode_responses=True
    )
    client = create_redis(settings)
    queue_client = create_queue(settings).redis
    try:
        # As the role sets it: a master cut off from its replicas refuses writes. (Not on
        # the replica: promoted, it has no replica of its own until the old master rejoins,
        # which a third node spares a real set.)
        await master.config_set("min-replicas-to-write", 1)
        await _until(lambda: _sentinels_see_the_replica(sentinel), 30, "Sentinel sees the replica")
        assert await _port_of(client) == replicated_redis.master_port
        assert await _port_of(queue_client) == replicated_redis.master_port

        acknowledged: list[int] = []
        stop = asyncio.Event()

        async def write_until_stopped() -> None:
            number = 0
            while not stop.is_set():
                await client.set(f"write:{number}", number)  # an error fails the test
                acknowledged.append(number)
                number += 1
                await asyncio.sleep(0.005)

        writer = asyncio.create_task(write_until_stopped())
        await _until(lambda: _true(len(acknowledged) > 20), 10, "writes before the failover")
        # The planned failover: writes held on the master (so none lands there after the
        # replica is promoted), then Sentinel switches.
        await master.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        await sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        took = await _until(
            lambda: _answers_from(client, replicated_redis.replica_port),
            20,
            "the client writes to the promoted replica",
        )
        count_at_switch = len(acknowledged)
        await _until(lambda: _true(len(acknowledged) > count_at_switch + 20), 10, "more writes")
        stop.set()
        await writer
        print(f"\nthe client wrote to the new master {took:.1f} s after SENTINEL FAILOVER")

        assert await _port_of(queue_client) == replicated_redis.replica_port
        stored = await replica.mget([f"write:{number}" for number in acknowledged])
        lost = [number for number, value in zip(acknowledged, stored, strict=True) if value is None]
        print(f"{len(acknowledged)} acknowledged writes, {len(lost)} lost")
        assert lost == []
    finally:
        for opened in (client, queue_client, master, replica, sentinel):
            await opened.aclose()


async def _true(value: bool) -> bool:
    return value


async def _answers_from(client: Redis, port: int) -> bool:
    return await _port_of(client) == port


async def test_noreplicas_is_unavailable_with_retry_after_not_a_500(
    app, client, church_a, spare_redis
):
    assert dependency_unavailable(ResponseError("NOREPLICAS Not enough good replicas to write."))
    async with app_using_redis(app, spare_redis.url):
        raw = Redis.from_url(spare_redis.url)
        try:
            await raw.config_set("min-replicas-to-write", 1)  # and it has none
            response = await client.post(
                "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
            )
        finally:
            await raw.config_set("min-replicas-to-write", 0)
            await raw.aclose()
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()


async def test_through_sentinel_a_master_refusing_writes_answers_503_after_the_retry_budget(
    app, client, church_a, replicated_redis
):
    master = Redis(port=replicated_redis.master_port)
    try:
        # Two good replicas wanted, one there: every write is refused, on every retry.
        await master.config_set("min-replicas-to-write", 2)
        overrides = _sentinel_settings(replicated_redis, redis_failover_retry_seconds=0.5)
        url = str(overrides.pop("redis_url"))
        async with app_using_redis(app, url, **overrides):
            started = time.monotonic()
            response = await client.post(
                "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
            )
            waited = time.monotonic() - started
    finally:
        await master.aclose()
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert 0.5 <= waited < 5


async def test_a_new_master_announced_drops_the_old_masters_connections_and_keeps_the_new_ones(
    make_settings, replicated_redis
):
    settings = make_settings(**_sentinel_settings(replicated_redis))
    sentinel = Redis(
        port=replicated_redis.sentinel_ports[0], password=SENTINEL_PASSWORD, decode_responses=True
    )
    client = create_redis(settings)
    pool = client.connection_pool
    try:
        await _until(lambda: _sentinels_see_the_replica(sentinel), 30, "Sentinel sees the replica")
        on_old = await pool.get_connection()  # the watch starts with the first connection
        assert on_old.port == replicated_redis.master_port

        # The racy point: the announcement has reached the watch, and a connection made
        # meanwhile is on the new master already. The watch waits there until let go.
        announced, let_go = asyncio.Event(), asyncio.Event()
        drop = pool._drop_connections_off

        async def paused_drop(master):
            announced.set()
            await let_go.wait()
            await drop(master)

        pool._drop_connections_off = paused_drop
        await sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        await asyncio.wait_for(announced.wait(), 30)
        on_new = await pool.get_connection()
        assert on_new.port == replicated_redis.replica_port

        let_go.set()
        await _until(lambda: _true(not on_old.is_connected), 5, "the old master's connection")
        assert on_new.is_connected
        await on_new.send_command("PING")
        assert await on_new.read_response() in ("PONG", b"PONG", True)
        await pool.release(on_old)
        await pool.release(on_new)
    finally:
        for opened in (client, sentinel):
            await opened.aclose()
