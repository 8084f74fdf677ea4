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
across every app server, a second or so behind; they are also fed to Prometheus. A lookup
that this process's copy cannot answer is one round trip (version and entry read by one Lua
script).

Values are stored as encoded JSON and a hit is handed back as that text, so a route can
answer it without decoding and re-encoding (``koinonia.responses.json_response``).

Each process also keeps its own copy of the pages it served last (``LocalPages``), under the
version it read them at, so a warm process answers a hit with no Redis round trip at all.
It learns of a bump without asking Redis: ``bump_versions`` publishes the new version on the
invalidation channel (in the same Lua script as the INCR), and the process's subscriber
(``session_cache.RevocationListener``, which already listens there for session revocations)
hands it to ``LocalPages.bumped``; the process that wrote drops its copy at once. The same
rules as the session cache hold: the copy is used only while that subscription is up
(cleared when it drops, and again once it is back), a load that began before a bump it heard
of never stores what it read, and no copy is served more than ``cache_local_seconds``
(default 5, at most 30) after it was read from Redis, the bound on a message that never came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from koinonia.responses import json_bytes
from koinonia.stores.local_copy import LocalCopy
from koinonia.stores.sessions import REVOCATION_CHANNEL

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
# Version bumps go out on the channel every process already subscribes to for session
# revocations (one subscription per process, and the one channel the Redis role's ACL grants
# for it); their messages are JSON objects, the revocations' a list or "*".
VERSION_CHANNEL = REVOCATION_CHANNEL


# KEYS: the family's version key. ARGV: the entry key without its version suffix. Returns
# {version, entry or nil}. The entry key is derived in the script from the version (so not
# declared in KEYS): fine on the single Redis this service uses, not on Redis Cluster.
_LOOKUP_SCRIPT = """
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', ARGV[1] .. ':v' .. version)}
"""


# KEYS: the families' version keys. ARGV: the channel, the church id, then the families in the
# order of KEYS. Increments each version and announces it, in one step: no process can read a
# new version whose announcement is not already on its way. Returns the new versions.
_BUMP_SCRIPT = """
local versions = {}
for i, key in ipairs(KEYS) do
  local version = redis.call('INCR', key)
  redis.call('PUBLISH', ARGV[1], '{"family":"' .. ARGV[i + 2] .. '","church":"' .. ARGV[2]
    .. '","version":' .. version .. '}')
  versions[i] = version
end
return versions
"""


def cache_key(family: str, church_id: uuid.UUID | str, *parts: object) -> str:
    """The entry's key without its version (``versioned_key`` adds it)."""
    return ":".join([KEY_PREFIX + family, str(church_id), *(str(p) for p in parts)])


def versioned_key(key: str, version: int | str) -> str:
    return f"{key}:v{version}"


def version_key(family: str, church_id: uuid.UUID | str) -> str:
    return f"{VERSION_PREFIX}{family}:{church_id}"


async def bump_versions(redis: Redis, church_id: uuid.UUID | str, *families: str) -> dict[str, int]:
    """After a write: the church's cached pages of these families (default: all) are stale.

    Call it after the write has committed. One round trip: the versions are incremented and
    announced to every process (``VERSION_CHANNEL``); returns the new version per family.
    If Redis cannot be reached the bump is skipped with a warning (and ``{}`` returned): the
    entries may then be stale until their TTL.
    """
    families = families or FAMILIES
    try:
        versions = await redis.register_script(_BUMP_SCRIPT)(
            keys=[version_key(family, church_id) for family in families],
            args=[VERSION_CHANNEL, str(church_id), *families],
        )
    except RedisError:
        log.warning(
            "cache version bump skipped: Redis unavailable; entries may be stale until their TTL",
            extra={"churchId": str(church_id)},
        )
        return {}
    return {family: int(version) for family, version in zip(families, versions, strict=True)}


@dataclass(frozen=True, slots=True)
class _LocalPage:
    family: str
    church_id: str
    version: int
    body: bytes
    expires: float


class LocalPages(LocalCopy[_LocalPage]):
    """This process's copy of the hottest pages: key -> (version, body), a ``LocalCopy``
    that also drops a page once a newer version of its family is announced."""

    def __init__(
        self,
        max_age_seconds: float,
        *,
        max_entries: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_age_seconds, max_entries=max_entries, clock=clock)
        # (family, church id) -> the newest version announced while subscribed.
        self._announced: dict[tuple[str, str], int] = {}

    def get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        page = self._entries.get(key)
        if page is None:
            return None
        if page.expires <= self.clock() or page.version < self._announced.get(
            (page.family, page.church_id), 0
        ):
            del self._entries[key]
            return None
        return page.body

    def put(
        self,
        family: str,
        church_id: str,
        key: str,
        version: int,
        body: str | bytes,
        epoch: int,
    ) -> None:
        """Keep ``body``, read from Redis (or loaded) under ``version`` by a lookup that began
        at ``epoch``; ignored if a clear or a newer version came in since."""
        if not self.accepts(epoch) or version < self._announced.get((family, church_id), 0):
            return
        self._store(
            key,
            _LocalPage(
                family,
                church_id,
                version,
                body.encode() if isinstance(body, str) else body,
                self.clock() + self.max_age,
            ),
        )

    def bumped(self, family: str, church_id: str, version: int) -> None:
        """``version`` is now the family's current one for this church: older copies go."""
        if len(self._announced) >= 10 * self.max_entries:
            self.clear()  # bounded memory; forgetting costs misses, never a stale page
        announced = (family, church_id)
        if version > self._announced.get(announced, 0):
            self._announced[announced] = version
            stale = [
                key
                for key, page in self._entries.items()
                if (page.family, page.church_id) == announced and page.version < version
            ]
            for key in stale:
                del self._entries[key]

    def clear(self) -> None:
        super().clear()
        self._announced.clear()


class CacheService:
    def __init__(self, redis: Redis, metrics: Metrics | None, settings: Settings) -> None:
        self.redis = redis
        self.local = LocalPages(settings.cache_local_seconds)
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

    def local_hit(self, family: str, key: str) -> bytes | None:
        """The page of ``key`` if this process's copy holds it, counted as a hit; else
        ``None`` and nothing counted (the caller then asks ``get_or_load_json``)."""
        local = self.local.get(key)
        if local is not None:
            self._observe(family, "hit")
        return local

    async def get_or_load_json(
        self,
        family: str,
        church_id: uuid.UUID | str,
        key: str,
        loader: Callable[[], Awaitable[Any]],
    ) -> tuple[str | bytes, str]:
        """Return (encoded JSON, "hit"|"miss"|"error"); the loader's value must be JSON-able.

        ``key`` from ``cache_key``, of the same family and church. A hit is the stored text
        itself, no decoding, no re-encoding: from this process's copy (no round trip) or
        from Redis (one).
        """
        local = self.local_hit(family, key)
        if local is not None:
            return local, "hit"
        epoch = self.local.epoch()
        church = str(church_id)
        try:
            version, raw = await self._lookup(keys=[version_key(family, church)], args=[key])
        except RedisError:
            log.warning("cache unavailable; reading from the database", extra={"family": family})
            self._observe(family, "error")
            return json_bytes(await loader()), "error"
        if raw is not None:
            self._observe(family, "hit")
            self.local.put(family, church, key, int(version), raw, epoch)
            return raw, "hit"
        self._observe(family, "miss")
        encoded = json_bytes(await loader())
        try:
            # Under the version read before the load: if a write bumped it meanwhile, this
            # entry is already out of date and is never read.
            await self.redis.set(versioned_key(key, version), encoded, ex=self.ttl[family])
        except RedisError:
            log.warning("cache write skipped: Redis unavailable", extra={"family": family})
        else:
            self.local.put(family, church, key, int(version), encoded, epoch)
        return encoded, "miss"

    async def invalidate_church(self, church_id: uuid.UUID | str, *families: str) -> None:
        """Bump the versions, and drop this process's copies at once (the others hear it
        on the channel)."""
        church = str(church_id)
        for family, version in (await bump_versions(self.redis, church, *families)).items():
            self.local.bumped(family, church, version)

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
