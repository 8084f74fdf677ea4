"""Distributed locks on Redis, so that with several servers a piece of work runs once.

The primitive (SET NX PX with a unique token; release and extend as Lua check-and-act scripts)
is redis-py's own ``redis.asyncio.lock.Lock``: a well-kept implementation of exactly the
single-instance pattern.  Release must be an atomic check-and-delete: a GET followed by a DEL
in two round trips could delete a lock that expired between them and was taken by another
holder, letting two holders run the same work.  The Lua script does the comparison and the
delete inside Redis, so only the token that set the key can remove it.

This module adds what the original lock service offered on top: a holder name in the token
(so operators see who holds what), a background extender for long jobs, ``with_lock`` that
skips (and logs) when the lock is held elsewhere, force-release and a listing of active locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.lock import Lock as RedisLock
from redis.exceptions import LockError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "lock:"
DEFAULT_TTL_MS = 30_000

T = TypeVar("T")


def default_holder() -> str:
    """Who holds a lock, as shown to operators: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class HeldLock:
    """A lock this process acquired; ``token`` proves ownership to Redis."""

    name: str
    key: str
    token: str
    ttl_ms: int
    _lock: RedisLock = field(repr=False)
    lost: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def holder(self) -> str:
        return self.token.rsplit(":", 1)[0]


@dataclass(frozen=True)
class LockOutcome:
    """What ``with_lock`` did: ``ran`` is False when another holder had the lock."""

    ran: bool
    result: Any = None
    holder: str | None = None


class LockService:
    """Named distributed locks under a key prefix (``lock:<name>`` by default)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        default_ttl_ms: int = DEFAULT_TTL_MS,
        holder: str | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.default_ttl_ms = default_ttl_ms
        self.holder = holder or default_holder()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def acquire(self, name: str, ttl_ms: int | None = None) -> HeldLock | None:
        """Take the lock without waiting; None when someone else holds it."""
        ttl_ms = ttl_ms or self.default_ttl_ms
        key = self.key(name)
        token = f"{self.holder}:{uuid.uuid4().hex}"
        # thread_local=False: the token lives on this object, which may be released from
        # another task than the one that acquired it (the extender runs in its own task).
        lock = RedisLock(self.redis, key, timeout=ttl_ms / 1000, blocking=False, thread_local=False)
        if not await lock.acquire(blocking=False, token=token):
            return None
        return HeldLock(name=name, key=key, token=token, ttl_ms=ttl_ms, _lock=lock)

    async def release(self, lock: HeldLock) -> bool:
        """Release if we still hold it; False when the lock expired or belongs to another."""
        try:
            await lock._lock.release()
        except LockError:
            log.warning("lock %s was no longer held by %s at release", lock.name, lock.token)
            return False
        return True

    async def release_token(self, name: str, token: str) -> bool:
        """Release ``name`` only if ``token`` is the one holding it (atomic, see module doc)."""
        lock = RedisLock(self.redis, self.key(name), thread_local=False)
        try:
            await lock.do_release(token.encode())
        except LockError:
            return False
        return True

    async def extend(self, lock: HeldLock, ttl_ms: int | None = None) -> bool:
        """Reset the lock's TTL to ``ttl_ms`` (default: its original TTL) if still ours."""
        try:
            await lock._lock.extend((ttl_ms or lock.ttl_ms) / 1000, replace_ttl=True)
        except LockError:
            return False
        return True

    async def _keep_extended(self, lock: HeldLock) -> None:
        # Extend at a third of the TTL so that two missed beats still leave the lock alive.
        interval = max(lock.ttl_ms / 3000, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                extended = await self.extend(lock)
            except Exception:  # a Redis hiccup: try again next beat, the TTL still covers us
                log.exception("could not extend lock %s", lock.name)
                continue
            if not extended:
                log.warning("lock %s was lost while its work was still running", lock.name)
                lock.lost.set()
                return

    @contextlib.asynccontextmanager
    async def extending(self, lock: HeldLock) -> AsyncIterator[HeldLock]:
        """Keep ``lock`` alive (background extension) while the body runs."""
        extender = asyncio.create_task(self._keep_extended(lock), name=f"lock-extender:{lock.name}")
        try:
            yield lock
        finally:
            extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await extender

    @contextlib.asynccontextmanager
    async def hold(self, name: str, ttl_ms: int | None = None) -> AsyncIterator[HeldLock | None]:
        """Acquire, keep extending while the body runs, release at the end.

        Yields None (and runs the body) when another holder has the lock; callers decide.
        """
        lock = await self.acquire(name, ttl_ms)
        if lock is None:
            yield None
            return
        try:
            async with self.extending(lock):
                yield lock
        finally:
            await self.release(lock)

    async def with_lock(
        self, name: str, work: Callable[[], Awaitable[T]], ttl_ms: int | None = None
    ) -> LockOutcome:
        """Run ``work`` under the lock, or skip it (logged) when another holder has it."""
        async with self.hold(name, ttl_ms) as lock:
            if lock is None:
                holder = await self.holder_of(name)
                log.info("skipping %s: lock held by %s", name, holder or "another holder")
                return LockOutcome(ran=False, holder=holder)
            result = await work()
            return LockOutcome(ran=True, result=result, holder=lock.holder)

    async def is_held(self, name: str) -> bool:
        return bool(await self.redis.exists(self.key(name)))

    async def holder_of(self, name: str) -> str | None:
        token = _text(await self.redis.get(self.key(name)))
        return token.rsplit(":", 1)[0] if token else None

    async def force_release(self, name: str) -> bool:
        """Operators only: delete the lock whoever holds it (e.g. after a crashed holder)."""
        released = bool(await self.redis.delete(self.key(name)))
        if released:
            log.warning("lock %s force-released", name)
        return released

    async def list_active(self) -> list[dict[str, Any]]:
        """Active locks: name, holder and milliseconds of TTL left, sorted by name."""
        keys = [_text(k) async for k in self.redis.scan_iter(match=f"{self.prefix}*", count=200)]
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            values = await pipe.execute()
        active = []
        for i, key in enumerate(keys):
            token, ttl = _text(values[2 * i]), values[2 * i + 1]
            if token is None or ttl == -2:  # expired between SCAN and GET
                continue
            active.append(
                {
                    "name": key[len(self.prefix) :],
                    "holder": token.rsplit(":", 1)[0],
                    "ttlMs": ttl if ttl >= 0 else None,
                }
            )
        return sorted(active, key=lambda item: item["name"])
