"""Redis through Sentinel over TLS: with redis_url rediss:// (and its CA), the app speaks TLS
to the Sentinels as to Redis, follows a failover the Sentinels run over their TLS links, and
a TLS setting that cannot work is refused at start-up with its reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from koinonia.stores.client import create_redis
from tests.sentinel_servers import (
    MASTER_NAME,
    SENTINEL_PASSWORD,
    ReplicatedRedis,
    make_test_certificates,
)


@pytest.fixture
def tls_dir(tmp_path) -> Path:
    return make_test_certificates(tmp_path / "tls")


@pytest.fixture
def tls_replicated_redis(tmp_path, tls_dir) -> Iterator[ReplicatedRedis]:
    servers = ReplicatedRedis(tmp_path / "replicated", tls_dir=tls_dir)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def _tls_url(tls_dir: Path) -> str:
    # Host and port are the Sentinels' to name; the URL gives TLS and its CA.
    return f"rediss://sentinel-names-the-host:1/0?ssl_ca_certs={quote(str(tls_dir / 'ca.pem'))}"


def _over_tls(port: int, tls_dir: Path, **more: object) -> Redis:
    return Redis(
        port=port, ssl=True, ssl_ca_certs=str(tls_dir / "ca.pem"), decode_responses=True, **more
    )


async def _tls_port_of(client: Redis) -> int:
    return int((await client.config_get("tls-port"))["tls-port"])


async def _until_link_up(replica: Redis, bound: float) -> None:
    started = time.monotonic()
    while (await replica.info("replication"))["master_link_status"] != "up":
        if time.monotonic() - started > bound:
            raise AssertionError(f"the replica's link to its master not up after {bound} s")
        await asyncio.sleep(0.1)


async def _until_master_is(sentinel: Redis, port: int, bound: float) -> None:
    started = time.monotonic()
    while True:
        _host, named = await sentinel.execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
        )
        replicas = await sentinel.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        if int(named) == port and any(entry.get("flags") == "slave" for entry in replicas):
            return
        if time.monotonic() - started > bound:
            raise AssertionError(f"Sentinel names {named}, not {port}, after {bound} s")
        await asyncio.sleep(0.1)


async def test_through_tls_sentinels_the_client_writes_to_the_master_and_follows_a_failover(
    make_settings, tls_replicated_redis, tls_dir
):
    servers = tls_replicated_redis
    settings = make_settings(
        redis_url=_tls_url(tls_dir),
        redis_sentinels=servers.sentinels,
        redis_sentinel_master=MASTER_NAME,
        redis_sentinel_password=SecretStr(SENTINEL_PASSWORD),
    )
    sentinel = _over_tls(servers.sentinel_ports[0], tls_dir, password=SENTINEL_PASSWORD)
    replica = _over_tls(servers.replica_port, tls_dir)
    plain_sentinel = Redis(port=servers.sentinel_ports[0], password=SENTINEL_PASSWORD)
    client = create_redis(settings)
    try:
        # Only TLS is spoken: a plain-text client gets no answer from a Sentinel.
        with pytest.raises(RedisConnectionError):
            await plain_sentinel.ping()
        # The replica streams from the master over TLS, and Sentinel found it there.
        await _until_master_is(sentinel, servers.master_port, 30)
        await _until_link_up(replica, 30)

        await client.set("tls:before", "1")
        assert await _tls_port_of(client) == servers.master_port

        # The Sentinel promotes the replica over its TLS links; the client follows it.
        assert await sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        await _until_master_is(sentinel, servers.replica_port, 30)
        await client.set("tls:after", "2")
        assert await _tls_port_of(client) == servers.replica_port
        assert await replica.mget(["tls:before", "tls:after"]) == ["1", "2"]
    finally:
        for opened in (client, sentinel, replica, plain_sentinel):
            await opened.aclose()


def test_tls_files_on_a_plain_text_redis_url_are_refused_at_start_up(make_settings, tls_dir):
    plain = _tls_url(tls_dir).replace("rediss://", "redis://", 1)
    with pytest.raises(ValidationError, match=r"ssl_ca_certs given on a redis:// URL: use rediss"):
        make_settings(redis_url=plain, redis_sentinels=["127.0.0.1:26380"])


def test_an_unreadable_redis_ca_file_is_refused_at_start_up(make_settings, tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    url = f"rediss://127.0.0.1:6380/0?ssl_ca_certs={quote(str(missing))}"
    with pytest.raises(ValidationError, match=rf"ssl_ca_certs: {missing} is not a file"):
        make_settings(redis_url=url)
