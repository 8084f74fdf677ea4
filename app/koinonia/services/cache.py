"""Cache-aside on Redis, with hit/miss counters per key family.

Keys are ``cache:<family>:<church_id>:<rest>`` so one church's entries can be dropped by
pattern. Redis being down never fails a request: reads fall through to the loader (the
database), writes and invalidations are skipped with a warning, and the lookup is counted
as an ``error`` — the API answers, degraded, not failing.

Hit/miss counters are kept in Redis (a hash) so ``/api/admin/cache/metrics`` shows totals
across every app server, and also fed to Prometheus. The lookup and its counter are one Lua
script, so a hit costs one round trip to Redis rather than two.

Values are stored as encoded JSON; ``get_or_load_json`` hands a hit back as that text, so a
route can answer it without decoding and re-encoding (``koinonia.responses.json_response``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from koinonia.responses import json_bytes

if TYPE_CHECKING:
    from koinonia.metrics import Metrics
    from koinonia.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "cache:"
STATS_KEY = "cache-stats"
ANALYTICS = "analytics"
MEMBERS = "members"
FAMILIES = (ANALYTICS, MEMBERS)


# GET plus the hit/miss counter in one round trip. KEYS: entry, stats hash; ARGV: the
# counter fields for a hit and for a miss.
_LOOKUP_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if value then
    redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
else
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return value
"""


def cache_key(family: str, church_id: uuid.UUID | str, *parts: object) -> str:
    return ":".join([KEY_PREFIX + family, str(church_id), *(str(p) for p in parts)])


class CacheService:
    def __init__(self, redis: Redis, metrics: Metrics | None, settings: Settings) -> None:
        self.redis = redis
        self.metrics = metrics
        self.ttl = {
            ANALYTICS: settings.cache_analytics_ttl_seconds,
            MEMBERS: settings.cache_members_ttl_seconds,
        }
        self._lookup = redis.register_script(_LOOKUP_SCRIPT)

    def _observe(self, family: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_events.labels(family=family, result=result).inc()

    async def get_or_load_json(
        self, family: str, key: str, loader: Callable[[], Awaitable[Any]]
    ) -> tuple[str | bytes, str]:
        """Return (encoded JSON, "hit"|"miss"|"error"); the loader's value must be JSON-able.

        A hit is the stored text itself: one Redis round trip (lookup and counter together),
        no decoding, no re-encoding.
        """
        try:
            raw = await self._lookup(
                keys=[key, STATS_KEY], args=[f"{family}:hit", f"{family}:miss"]
            )
        except RedisError:
            log.warning("cache unavailable; reading from the database", extra={"family": family})
            self._observe(family, "error")
            return json_bytes(await loader()), "error"
        if raw is not None:
            self._observe(family, "hit")
            return raw, "hit"
        self._observe(family, "miss")
        encoded = json_bytes(await loader())
        try:
            await self.redis.set(key, encoded, ex=self.ttl[family])
        except RedisError:
            log.warning("cache write skipped: Redis unavailable", extra={"family": family})
        return encoded, "miss"

    async def get_or_load(
        self, family: str, key: str, loader: Callable[[], Awaitable[T]]
    ) -> tuple[T, str]:
        """Return (value, "hit"|"miss"|"error"): ``get_or_load_json`` decoded."""
        loaded: list[T] = []

        async def load() -> T:
            loaded.append(await loader())
            return loaded[0]

        encoded, status = await self.get_or_load_json(family, key, load)
        # On a miss or an error the loader's own value, not a JSON round trip of it.
        return (loaded[0] if loaded else json.loads(encoded)), status

    async def invalidate_pattern(self, pattern: str) -> int:
        """Delete every key matching ``pattern`` (SCAN, never KEYS: it would block Redis)."""
        deleted = 0
        try:
            batch: list[str] = []
            async for key in self.redis.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await self.redis.unlink(*batch)
                    batch = []
            if batch:
                deleted += await self.redis.unlink(*batch)
        except RedisError:
            # Entries then expire on their own TTL; log loudly as they may be stale till then.
            log.warning("cache invalidation skipped: Redis unavailable", extra={"pattern": pattern})
        return deleted

    async def invalidate_church(self, church_id: uuid.UUID | str, *families: str) -> int:
        total = 0
        for family in families or FAMILIES:
            total += await self.invalidate_pattern(cache_key(family, church_id, "*"))
        return total

    async def stats(self) -> dict[str, Any]:
        raw = await self.redis.hgetall(STATS_KEY)
        families: dict[str, dict[str, Any]] = {}
        total_hits = total_misses = 0
        for family in FAMILIES:
            hits = int(raw.get(f"{family}:hit", 0))
            misses = int(raw.get(f"{family}:miss", 0))
            total_hits += hits
            total_misses += misses
            families[family] = {
                "hits": hits,
                "misses": misses,
                "hitRate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
                "ttlSeconds": self.ttl[family],
            }
        lookups = total_hits + total_misses
        return {
            "families": families,
            "totals": {
                "hits": total_hits,
                "misses": total_misses,
                "hitRate": round(total_hits / lookups, 4) if lookups else 0.0,
            },
        }

    async def reset_stats(self) -> None:
        await self.redis.delete(STATS_KEY)

    async def health(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            await self.redis.ping()
            info = await self.redis.info("memory")
        except RedisError as exc:
            return {"status": "unhealthy", "error": type(exc).__name__}
        return {
            "status": "healthy",
            "latencyMs": round((time.perf_counter() - started) * 1000, 2),
            "usedMemory": info.get("used_memory_human"),
        }
