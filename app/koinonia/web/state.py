"""Per-process resources, opened by the app's lifespan and reached through ``current_app``.

Nothing here is module-global: one ``AppState`` is created with the app and stored on it as
``app.koinonia`` (a typed attribute of ``KoinoniaApp``, not a string-keyed extension). The
lifespan (``app.py``) fills its fields in ``before_serving`` and empties them in
``after_serving``; routes read them through ``get_state()`` and the accessors of
``web/resources.py``, which fail loudly outside the lifespan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from quart import Quart, current_app

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from saq.queue.redis import RedisQueue
    from tortoise.context import TortoiseContext

    from koinonia.metrics import Metrics
    from koinonia.services.queue import QueueHeadroom
    from koinonia.settings import Settings
    from koinonia.stores.cache import CacheService
    from koinonia.stores.events import EventHub
    from koinonia.stores.locks import LockService
    from koinonia.stores.session_cache import RevocationListener, SessionCache
    from koinonia.web.fast_path import FastPath


@dataclass
class AppState:
    settings: Settings
    started_at: float = field(default_factory=time.monotonic)
    metrics: Metrics | None = None
    redis: Redis | None = None
    db: TortoiseContext | None = None
    cache: CacheService | None = None
    session_cache: SessionCache | None = None
    revocations: RevocationListener | None = None
    # The messaging half (web/resources.py opens and closes them).
    sms_queue: RedisQueue | None = None
    queue_headroom: QueueHeadroom | None = None
    locks: LockService | None = None
    events: EventHub | None = None
    # Set when SIGTERM arrives (or after_serving starts): readiness answers 503 from then on.
    shutting_down: bool = False

    def require_redis(self) -> Redis:
        if self.redis is None:
            raise RuntimeError("Redis client not started (outside the app lifespan?)")
        return self.redis


class KoinoniaApp(Quart):
    """The Quart app with its typed per-process state."""

    koinonia: AppState
    # In front of Quart's ASGI entry (``app.asgi_app``); tests switch it and count its answers.
    fast_path: FastPath


def get_state(app: Quart | None = None) -> AppState:
    return cast("KoinoniaApp", app or current_app).koinonia
