"""Cache-aside on Redis that cannot serve a page older than the last write, with hit/miss
counters per key family.

Each church has a version per family (``cache-version:<family>:<church_id>``), and an entry
is stored under ``cache:<family>:<church_id>:<rest>:v<version>``. A write that changes what a
family's pages show increments the version (``bump_versions``: one INCR per family, no
keyspace scan); the old entries are never read again and expire on their TTL. A page loaded
while such a write ran was looked up under the old version and is stored under it, so it
cannot come back as the current page: the loser of that race costs one extra miss, never a
stale hit.

Redis being down never fails a request: reads fall through to the loader (the database),
writes and version bumps are skipped with a warning, and the lookup is counted as an
``error``: the API answers, degraded, not failing.

Hit/miss counters are counted in the process and added to a Redis hash every
``COUNTER_FLUSH_SECONDS`` (and at shutdown), so ``/api/admin/cache/metrics`` shows totals
across every app server, a second or so behind; they are also fed to Prometheus. A lookup is
one round trip (version and entry read by one Lua script).

Values are stored as encoded JSON and a hit is handed back as that text, so a route can
answer it without decoding and re-encoding (``koinonia.responses.json_response``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from koinonia.responses import json_bytes

if TYPE_CHECKING:
    from koinonia.metrics import Metrics
    from koinonia.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "cache:"
VERSION_PREFIX = "cache-version:"
STATS_KEY = "cache-stats"
ANALYTICS = "analytics"
MEMBERS = "members"
FAMILIES = (ANALYTICS, MEMBERS)
RESULTS = ("hit", "miss", "error")
COUNTER_FLUSH_SECONDS = 1.0


# KEYS: the family's version key. ARGV: the entry key without its version suffix. Returns
# {version, entry or nil}. The entry key is derived in the script from the version (so not
# declared in KEYS): fine on the single Redis this service uses, not on Redis Cluster.
_LOOKUP_SCRIPT = """
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', ARGV[1] .. ':v' .. version)}
"""


def cache_key(family: str, church_id: uuid.UUID | str, *parts: object) -> str:
    """The entry's key without its version (``versioned_key`` adds it)."""
    return ":".join([KEY_PREFIX + family, str(church_id), *(str(p) for p in parts)])


def versioned_key(key: str, version: int | str) -> str:
    return f"{key}:v{version}"


def version_key(family: str, church_id: uuid.UUID | str) -> str:
    return f"{VERSION_PREFIX}{family}:{church_id}"


async def bump_versions(redis: Redis, church_id: uuid.UUID | str, *families: str) -> None:
    """After a write: the church's cached pages of these families (default: all) are stale.

    Call it after the write has committed. If Redis cannot be reached the bump is skipped
    with a warning: the entries may then be stale until their TTL.
    """
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for family in families or FAMILIES:
                pipe.incr(version_key(family, church_id))
            await pipe.execute()
    except RedisError:
        log.warning(
            "cache version bump skipped: Redis unavailable; entries may be stale until their TTL",
            extra={"churchId": str(church_id)},
        )


class CacheService:
    def __init__(self, redis: Redis, metrics: Metrics | None, settings: Settings) -> None:
        self.redis = redis
        self.ttl = {
            ANALYTICS: settings.cache_analytics_ttl_seconds,
            MEMBERS: settings.cache_members_ttl_seconds,
        }
        self._lookup = redis.register_script(_LOOKUP_SCRIPT)
        # "<family>:<result>" -> lookups not yet added to STATS_KEY.
        self._unflushed: Counter[str] = Counter()
        self._flusher: asyncio.Task[None] | None = None
        # The labelled Prometheus children, bound once rather than looked up per request.
        self._observed = (
            {
                (family, result): metrics.cache_events.labels(family=family, result=result)
                for family in FAMILIES
                for result in RESULTS
            }
            if metrics is not None
            else {}
        )

    def _observe(self, family: str, result: str) -> None:
        self._unflushed[f"{family}:{result}"] += 1
        child = self._observed.get((family, result))
        if child is not None:
            child.inc()

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_every_second(), name="cache-counters")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        with contextlib.suppress(RedisError, OSError):
            await self.flush_counters()

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(COUNTER_FLUSH_SECONDS)
            # On failure the counts are kept, and added at the next flush that reaches Redis.
            with contextlib.suppress(RedisError, OSError):
                await self.flush_counters()

    async def flush_counters(self) -> None:
        """Add the counts of this process to the shared hash (one round trip)."""
        pending = {field: n for field, n in self._unflushed.items() if n}
        if not pending:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for field, n in pending.items():
                pipe.hincrby(STATS_KEY, field, n)
            await pipe.execute()
        self._unflushed.subtract(pending)

    async def get_or_load_json(
        self,
        family: str,
        church_id: uuid.UUID | str,
        key: str,
        loader: Callable[[], Awaitable[Any]],
    ) -> tuple[str | bytes, str]:
        """Return (encoded JSON, "hit"|"miss"|"error"); the loader's value must be JSON-able.

        ``key`` from ``cache_key``, of the same family and church. A hit is the stored text
        itself: one Redis round trip, no decoding, no re-encoding.
        """
        try:
            version, raw = await self._lookup(keys=[version_key(family, church_id)], args=[key])
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
            # Under the version read before the load: if a write bumped it meanwhile, this
            # entry is already out of date and is never read.
            await self.redis.set(versioned_key(key, version), encoded, ex=self.ttl[family])
        except RedisError:
            log.warning("cache write skipped: Redis unavailable", extra={"family": family})
        return encoded, "miss"

    async def invalidate_church(self, church_id: uuid.UUID | str, *families: str) -> None:
        await bump_versions(self.redis, church_id, *families)

    async def stats(self) -> dict[str, Any]:
        await self.flush_counters()
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
        self._unflushed.clear()
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
