"""Church events over Redis pub/sub, for the websocket.

Publishers (API and workers, on any server) publish JSON on ``church:<id>:events``.  Each app
process keeps ONE pattern subscription (``church:*:events``) and fans messages out in-process
to the sockets of that church, so a thousand open sockets cost one Redis connection, not a
thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL_PATTERN = "church:*:events"
SUBSCRIBER_BUFFER = 100


def church_channel(church_id: uuid.UUID | str) -> str:
    return f"church:{church_id}:events"


async def publish(redis: Redis, church_id: uuid.UUID | str, event: dict[str, Any]) -> None:
    """Best effort: a missed live update is acceptable, failing the caller is not."""
    try:
        await redis.publish(church_channel(church_id), orjson.dumps(event, default=str))
    except RedisError:
        log.warning("could not publish %s event for church %s", event.get("type"), church_id)


class EventHub:
    """One pattern subscription per process, fanned out to per-socket queues."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(CHANNEL_PATTERN)
                self._ready.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                log.warning("event subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, channel: Any, data: Any) -> None:
        channel = channel.decode() if isinstance(channel, bytes) else channel
        church_id = channel.split(":")[1]
        queues = self._subscribers.get(church_id)
        if not queues:
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        for queue in queues:
            if queue.full():  # a slow socket loses its oldest update, not the others' updates
                queue.get_nowait()
            queue.put_nowait(event)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-hub")
        await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: shutdown must not hang on a Redis connection that is already gone.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=2)
            self._task = None

    @contextlib.asynccontextmanager
    async def subscribe(
        self, church_id: uuid.UUID | str
    ) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        await self.start()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=SUBSCRIBER_BUFFER)
        key = str(church_id)
        self._subscribers.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            self._subscribers[key].discard(queue)
            if not self._subscribers[key]:
                del self._subscribers[key]
