"""Per-process resources, created by the app's lifespan and reached through ``current_app``.

Nothing here is module-global: ``AppState`` lives in ``app.extensions["koinonia"]`` from
``before_serving`` to ``after_serving``. Blueprints that need their own resources (the job
queue, pub/sub) create them in ``@blueprint.before_app_serving`` and park them in ``extras``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quart import Quart, current_app

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from tortoise.context import TortoiseContext

    from koinonia.services.cache import CacheService
    from koinonia.services.session_cache import RevocationListener, SessionCache
    from koinonia.settings import Settings

EXTENSION_KEY = "koinonia"


@dataclass
class AppState:
    settings: Settings
    started_at: float = field(default_factory=time.monotonic)
    redis: Redis | None = None
    db: TortoiseContext | None = None
    cache: CacheService | None = None
    session_cache: SessionCache | None = None
    revocations: RevocationListener | None = None
    # Set when SIGTERM arrives (or after_serving starts): readiness answers 503 from then on.
    shutting_down: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def require_redis(self) -> Redis:
        if self.redis is None:
            raise RuntimeError("Redis client not started (outside the app lifespan?)")
        return self.redis


def get_state(app: Quart | None = None) -> AppState:
    return (app or current_app).extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
