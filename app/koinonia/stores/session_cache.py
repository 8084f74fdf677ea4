"""Session lookups answered in-process, for at most ``session_cache_seconds``.

Every request names its session; asking Redis each time is a round trip on every request.
Each process therefore keeps the sessions it looked up recently, and drops them:

* when any process revokes them: the revocation is published on Redis
  (``sessions.REVOCATION_CHANNEL``) and ``RevocationListener`` evicts the entries here and
  closes the sessions' WebSockets, typically within milliseconds;
* when the entry is ``session_cache_seconds`` old (default 5, at most 30), whatever
  happened: the bound on how long a revocation whose message was lost can go unnoticed;
* all of them when the subscription is lost: until it is back (subscribed, then the
  cache cleared again) every lookup goes to Redis, as if there were no cache.

A lookup that started before an eviction does not store what it read (``_epoch``): it may
have read the session just before it was revoked.

The same subscription carries the cache's version bumps (``cache.bump_versions``) to the
process's copy of the hottest pages (``cache.LocalPages``), under the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from koinonia.stores import sessions
from koinonia.stores.local_copy import LocalCopy
from koinonia.stores.sessions import SessionData

if TYPE_CHECKING:
    from koinonia.stores.cache import LocalPages

log = logging.getLogger(__name__)

# How often the subscription is pinged, and how long it may stay silent before it is taken
# for lost: a connection cut without a reset (a dropped route) never raises on its own.
PING_INTERVAL_SECONDS = 1.0
SILENCE_LIMIT_SECONDS = 3.0
RECONNECT_DELAY_SECONDS = 1.0


class SessionCache(LocalCopy[tuple[SessionData, float]]):
    """Session id -> (session, expiry): a ``LocalCopy`` whose entries never outlive the
    session's own expiry in Redis."""

    def __init__(
        self,
        max_age_seconds: float,
        session_ttl_seconds: int,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(max_age_seconds, max_entries=max_entries, clock=clock)
        self.session_ttl = session_ttl_seconds

    def get(self, session_id: str) -> SessionData | None:
        if not self.enabled:
            return None
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[session_id]
            return None
        return entry[0]

    def put(self, session: SessionData, epoch: int) -> None:
        if not self.accepts(epoch):
            return
        # Never past the session's own expiry in Redis.
        expires = min(self.clock() + self.max_age, session.created_at + self.session_ttl)
        self._store(session.session_id, (session, expires))

    def evict(self, session_ids: list[str]) -> None:
        self._epoch += 1
        for session_id in session_ids:
            self._entries.pop(session_id, None)


async def lookup(redis: Redis, cache: SessionCache | None, token: str) -> SessionData | None:
    """The session of ``token``: from the cache when it holds it, else from Redis."""
    if not sessions.valid_token(token):
        return None
    session_id = sessions.session_id_of(token)
    if cache is None:
        return await sessions.read_session(redis, session_id)
    cached = cache.get(session_id)
    if cached is not None:
        return cached
    epoch = cache.epoch()
    session = await sessions.read_session(redis, session_id)
    if session is not None:
        cache.put(session, epoch)
    return session


class RevocationListener:
    """One subscription per process to the revocation channel: evicts cached sessions and
    wakes the WebSockets of revoked sessions (``watch``); drops the copies of ``pages`` made
    stale by a version bump.

    ``redis`` is its own client, made with ``create_redis(..., reconnect=False)`` so that a
    lost connection surfaces here, and closed by ``stop``.
    """

    def __init__(self, redis: Redis, cache: SessionCache, pages: LocalPages | None = None) -> None:
        self.redis = redis
        self.cache = cache
        self.pages = pages
        self._task: asyncio.Task[None] | None = None
        self._watchers: dict[str, set[asyncio.Event]] = {}
        # Subscribed, so no revocation goes unnoticed: the cache is enabled only while so.
        self.up = False
        self._warned = False
        # Set on every change of the subscription (up or down) and every message handled;
        # tests wait on it instead of sleeping.
        self.changed = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="session-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=2)
            self._task = None
        self._set_down()
        await self.redis.aclose()

    @contextlib.contextmanager
    def watch(self, session_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``session_id`` is revoked (or every session is), or when the
        subscription is lost (the watcher then checks Redis itself)."""
        event = asyncio.Event()
        self._watchers.setdefault(session_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(session_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[session_id]

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _set_down(self) -> None:
        self.up = False
        self.cache.disable()
        if self.pages is not None:
            self.pages.disable()
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()
        self._notify()

    def revoked(self, message: str | bytes) -> None:
        """A message of the revocation channel: a JSON list of session ids, or ``*``; or a
        cache version bump (a JSON object: family, church, version)."""
        text = message.decode() if isinstance(message, bytes) else message
        if text == sessions.REVOKE_ALL:
            self.drop(None)
            return
        try:
            decoded = orjson.loads(text)
            if isinstance(decoded, dict):
                bump = (str(decoded["family"]), str(decoded["church"]), int(decoded["version"]))
            else:
                ids = [str(i) for i in decoded]
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            log.warning("ignored a malformed message on the revocation channel")
            return
        if isinstance(decoded, dict):
            if self.pages is not None:
                self.pages.bumped(*bump)
            self._notify()
            return
        self.drop(ids)

    def drop(self, session_ids: list[str] | None) -> None:
        """Forget these sessions (``None``: all) and wake their WebSockets. Called for the
        channel's messages, and at once by the process that revoked them."""
        if session_ids is None:
            self.cache.clear()
            targets = list(self._watchers)
        else:
            self.cache.evict(session_ids)
            targets = [i for i in session_ids if i in self._watchers]
        for session_id in targets:
            for event in self._watchers.get(session_id, ()):
                event.set()
        self._notify()

    async def _reconnect_delay(self) -> None:
        await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as error:
                # Once per outage (and at a first subscription that fails, e.g. an ACL
                # without the channel), not at every retry.
                if self.up or not self._warned:
                    log.warning(
                        "session revocations not subscribed (%s); sessions read from Redis",
                        type(error).__name__,
                    )
                    self._warned = True
                self._set_down()
                await self._reconnect_delay()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _listen(self, pubsub: object) -> None:
        await pubsub.subscribe(sessions.REVOCATION_CHANNEL)  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        heard = last_ping = loop.time()
        while True:
            message = await pubsub.get_message(timeout=PING_INTERVAL_SECONDS)  # type: ignore[attr-defined]
            now = loop.time()
            if message is not None:
                heard = now
                kind = message["type"]
                if kind == "subscribe":
                    # Subscribed: from now on no revocation is missed, so what was read
                    # before (while nothing was listening) is dropped and the cache used.
                    self.up = True
                    self.cache.enable()
                    if self.pages is not None:
                        self.pages.enable()
                    self._notify()
                elif kind == "message":
                    self.revoked(message["data"])
            if now - last_ping >= PING_INTERVAL_SECONDS:
                await pubsub.ping()  # type: ignore[attr-defined]
                last_ping = now
            if now - heard > SILENCE_LIMIT_SECONDS:
                raise TimeoutError("session revocation subscription silent")


async def revoke_user(
    redis: Redis, listener: RevocationListener | None, user_id: object
) -> list[str]:
    """End every session of a user now: in Redis, in every process's cache (published), and
    in this process at once, which also closes the user's WebSockets here."""
    revoked = await sessions.revoke_user_sessions(redis, str(user_id))
    if listener is not None:
        listener.drop(revoked)
    return revoked
