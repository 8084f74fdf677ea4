"""redis-py asyncio client factory (hiredis parser is picked up automatically when installed)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from koinonia.deadline import within
from koinonia.settings import Settings


def create_redis(settings: Settings, *, decode_responses: bool = True) -> Redis:
    """One pooled client per process; created in the app/worker start-up, closed at shutdown.

    Short socket timeouts: a dead Redis must make calls fail fast (the cache then degrades to
    the database) rather than hang requests.
    """
    return Redis.from_url(
        settings.redis_url.get_secret_value(),
        decode_responses=decode_responses,
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        # One quick reconnect attempt, no backoff: the callers have their own fallback.
        retry=Retry(NoBackoff(), 1),
    )


async def ping_redis(client: Redis, timeout_seconds: float) -> None:
    """Raise unless Redis answers PING within ``timeout_seconds``."""
    await within(client.ping(), timeout_seconds)
