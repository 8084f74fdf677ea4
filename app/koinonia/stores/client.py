"""redis-py asyncio client factory (hiredis parser is picked up automatically when installed).

One Redis (``redis_url``), or a master found through Redis Sentinel (``redis_sentinels``):
every new connection asks the Sentinels for the master, so after a failover the clients
follow the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from koinonia.deadline import within
from koinonia.settings import Settings

log = logging.getLogger(__name__)

# Backoff between attempts while a failover runs: quick at first (a dropped connection to a
# live master), then at most a second apart (the Sentinels electing a new master).
_FAILOVER_BACKOFF_BASE_SECONDS = 0.05
_FAILOVER_BACKOFF_CAP_SECONDS = 1.0
# How long the +switch-master watch waits before it subscribes on the next Sentinel.
_SWITCH_WATCH_RETRY_SECONDS = 0.5


def _noreplicas(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and str(error).startswith("NOREPLICAS")


class _MasterCheckingConnection(SentinelManagedConnection):
    """A master connection that re-asks the Sentinels on every reconnect and on NOREPLICAS.

    redis-py already drops a connection whose master was demoted (READONLY). A master that
    refuses writes for lack of replicas (``min-replicas-to-write``) is most often one the
    Sentinels are failing over, or one whose replicas follow a new master already; the
    refused command did not run, so it is retried like a lost connection: on the master the
    Sentinels name then, within the failover budget.
    """

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        # redis-py 8.2's asyncio connection reconnects here to its last host and port
        # (connect_check_health), not through the Sentinels: a retried command went back to
        # the old master every time. connect() asks the Sentinels.
        if not self.is_connected:
            await self.connect()
        await super().send_packed_command(*args, **kwargs)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as error:
            if not (self.connection_pool.is_master and _noreplicas(error)):
                raise
            await self.disconnect()
            raise RedisConnectionError(f"master refused the write: {error}") from error


class _MasterCheckingSSLConnection(_MasterCheckingConnection, SentinelManagedSSLConnection):
    pass


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (each new connection asks for the master) that waits for a free
    connection like ``BlockingConnectionPool``, and drops every connection to the old master
    the moment the Sentinels announce a new one (``+switch-master``): a connection left on
    the old one would go on reading from it (SAQ's blocking dequeue among them) until it is
    demoted, seconds later, and what it wrote there meanwhile would be lost."""

    _switch_watch: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._switch_watch is None or self._switch_watch.done():
            self._switch_watch = asyncio.create_task(self._drop_connections_on_switch())
        return await super().get_connection(*args, **kwargs)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        # Closing the pool (the client's aclose): the watch ends with it. The Sentinel pool
        # itself disconnects idle connections only (a new master found), and keeps it.
        watch = self._switch_watch
        if inuse_connections and watch is not None:
            self._switch_watch = None
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await super().disconnect(inuse_connections)

    async def _drop_connections_on_switch(self) -> None:
        sentinels = self.sentinel_manager.sentinels
        for number in itertools.count():
            pubsub = sentinels[number % len(sentinels)].pubsub()
            try:
                await pubsub.subscribe("+switch-master")
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        data = data.decode()
                    if isinstance(data, str) and data.split(" ", 1)[0] == self.service_name:
                        log.info("new Redis master announced; reconnecting: %s", data)
                        await self._drop_connections_off(_announced_master(data))
            except (RedisError, OSError):
                await asyncio.sleep(_SWITCH_WATCH_RETRY_SECONDS)  # next Sentinel
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _drop_connections_off(self, master: tuple[str, int]) -> None:
        """Disconnects every connection that is not on ``master``, idle or in use. One made
        on the new master before the announcement came keeps its command in flight (a
        dropped one would be sent again, and SAQ's blocking dequeue could lose the job it
        had just moved)."""
        self.master_address = master
        for connection in [*self._get_free_connections(), *self._get_in_use_connections()]:
            if (connection.host, connection.port) != master:
                await connection.disconnect()


def _announced_master(announcement: str) -> tuple[str, int]:
    """The new master of a ``+switch-master`` message: "name old-host old-port new-host
    new-port" (hosts as the Sentinels announce them, as they name the master on request)."""
    *_, host, port = announcement.split()
    return host, int(port)


def failover_retry(budget_seconds: float) -> Retry:
    """Retries with exponential backoff (capped) whose waits add up to ``budget_seconds``:
    a command meeting a failover (the master gone, MasterNotFoundError while the Sentinels
    elect another, READONLY from a demoted one) is tried again on the new master instead of
    failing. Only connection-level errors are retried, i.e. a command the server refused
    or never received; the app's writes are keyed sets and SAQ's enqueue refuses a key that
    is waiting, so the rare command that ran before its connection broke repeats harmlessly.
    """
    backoff = ExponentialBackoff(
        cap=_FAILOVER_BACKOFF_CAP_SECONDS, base=_FAILOVER_BACKOFF_BASE_SECONDS
    )
    retries, waited = 0, 0.0
    while waited < budget_seconds:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries)


def redis_unavailable(error: BaseException) -> bool:
    """True for a Redis error that means "not now" rather than a bug: unreachable, no master
    (a failover in progress), a demoted master, or writes refused for lack of replicas
    (``min-replicas-to-write``: NOREPLICAS)."""
    return isinstance(error, RedisConnectionError | RedisTimeoutError | ReadOnlyError) or (
        _noreplicas(error)
    )


def _sentinel_pool(
    settings: Settings, *, decode_responses: bool, retry: Retry, **pool_kwargs: Any
) -> Redis:
    # redis_url still gives the user, password, database and TLS of the master connections;
    # its host and port are the Sentinels' to decide.
    url_kwargs = parse_url(settings.redis_url.get_secret_value())
    url_kwargs.pop("host", None)
    url_kwargs.pop("port", None)
    tls = issubclass(url_kwargs.pop("connection_class", SentinelManagedConnection), SSLConnection)
    sentinel_password = settings.redis_sentinel_password
    sentinel = Sentinel(
        [_host_port(address) for address in settings.redis_sentinels],
        sentinel_kwargs={
            "username": settings.redis_sentinel_username,
            "password": sentinel_password.get_secret_value() if sentinel_password else None,
            "socket_timeout": settings.redis_socket_timeout,
            "socket_connect_timeout": settings.redis_socket_timeout,
            **_sentinel_tls_kwargs(url_kwargs, tls=tls),
        },
    )
    return sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=Redis,
        connection_pool_class=BlockingSentinelConnectionPool,
        connection_class=_MasterCheckingSSLConnection if tls else _MasterCheckingConnection,
        decode_responses=decode_responses,
        retry=retry,
        **url_kwargs,
        **pool_kwargs,
    )


def _sentinel_tls_kwargs(url_kwargs: dict[str, Any], *, tls: bool) -> dict[str, Any]:
    """The Sentinels are spoken to as Redis is: over TLS with the same CA and checks
    (redis_url's ssl_* parameters) when redis_url is rediss://. A Sentinel set up with
    Redis's TLS (the redis role's redis_sentinel_tls_port) answers only over TLS, and the
    master it names must be the one the CA vouches for."""
    if not tls:
        return {}
    return {"ssl": True, **{k: v for k, v in url_kwargs.items() if k.startswith("ssl_")}}


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def create_redis_client(
    settings: Settings, *, decode_responses: bool, retry: Retry, **pool_kwargs: Any
) -> Redis:
    """A client on a blocking pool of ``redis_max_connections``: the one Redis of
    ``redis_url``, or the master the Sentinels name when ``redis_sentinels`` is set."""
    pool_kwargs = {
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_pool_timeout,
        **pool_kwargs,
    }
    if settings.redis_sentinels:
        return _sentinel_pool(
            settings, decode_responses=decode_responses, retry=retry, **pool_kwargs
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        decode_responses=decode_responses,
        retry=retry,
        **pool_kwargs,
    )
    # from_pool: closing the client closes the pool too.
    return Redis.from_pool(pool)


def create_redis(
    settings: Settings, *, decode_responses: bool = True, reconnect: bool = True
) -> Redis:
    """One pooled client per process; created in the app/worker start-up, closed at shutdown.

    Short socket timeouts: a dead Redis must make calls fail fast (the cache then degrades to
    the database) rather than hang requests.
    """
    if not reconnect:
        # None, for a subscription that must notice every lost connection (redis-py would
        # otherwise resubscribe silently, the messages in between lost).
        retry = Retry(NoBackoff(), 0)
    elif settings.redis_sentinels:
        # A failover is expected to end within the budget: wait for the new master.
        retry = failover_retry(settings.redis_failover_retry_seconds)
    else:
        # One quick reconnect attempt, no backoff: the callers have their own fallback.
        retry = Retry(NoBackoff(), 1)
    # A blocking pool: when every connection is busy a call waits (up to
    # redis_pool_timeout) for one to come back. redis-py's default pool raises "Too many
    # connections" at once instead, which under a burst of more concurrent requests than
    # redis_max_connections turned into 503s (session lookups) and stuck SAQ jobs.
    return create_redis_client(
        settings,
        decode_responses=decode_responses,
        retry=retry,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
    )


async def ping_redis(client: Redis, timeout_seconds: float) -> None:
    """Raise unless Redis answers PING within ``timeout_seconds``."""
    await within(client.ping(), timeout_seconds)
