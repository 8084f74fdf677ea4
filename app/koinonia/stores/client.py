"""redis-py asyncio client factory (hiredis parser is picked up automatically when installed)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from koinonia.deadline import within
from koinonia.settings import Settings


def create_redis(
    settings: Settings, *, decode_responses: bool = True, reconnect: bool = True
) -> Redis:
    """One pooled client per process; created in the app/worker start-up, closed at shutdown.

    Short socket timeouts: a dead Redis must make calls fail fast (the cache then degrades to
    the database) rather than hang requests.
    """
    # A blocking pool: when every connection is busy a call waits (up to
    # redis_pool_timeout) for one to come back. redis-py's default pool raises "Too many
    # connections" at once instead, which under a burst of more concurrent requests than
    # redis_max_connections turned into 503s (session lookups) and stuck SAQ jobs.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout,
        decode_responses=decode_responses,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        # One quick reconnect attempt, no backoff: the callers have their own fallback.
        # reconnect=False: none, for a subscription that must notice every lost connection
        # (redis-py would otherwise resubscribe silently, the messages in between lost).
        retry=Retry(NoBackoff(), 1 if reconnect else 0),
    )
    # from_pool: closing the client closes the pool too.
    return Redis.from_pool(pool)


async def ping_redis(client: Redis, timeout_seconds: float) -> None:
    """Raise unless Redis answers PING within ``timeout_seconds``."""
    await within(client.ping(), timeout_seconds)
