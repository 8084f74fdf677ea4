"""Replay protection for signed provider callbacks.

Twilio's signature covers the URL and every form field but no timestamp, so a captured
callback stays valid forever: replayed later, an old ``STOP``/``START`` text would flip a
member's opt-in back. Each signed callback is therefore claimed once in Redis (``SET NX`` with
a TTL, keyed by its signature, which differs whenever the URL or any field differs); a second
delivery of the same callback within the TTL is not handled again.

A replay is acknowledged as a no-op with the usual success answer rather than refused: a
provider's own redelivery after a lost answer is byte-identical to an attacker's replay, and a
success stops its retries; in both cases nothing is changed. If handling fails, the claim is
released so that the provider's retry is handled.

Without Redis the check fails open: the handlers are idempotent on their own (a MessageSid is
recorded once, and an opt-in change applies only with a newly recorded text; delivery
statuses only move forward), so dropping real texts during a Redis outage would cost more
than it protects.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SEEN_PREFIX = "webhook-seen:"


def seen_key(signature: str) -> str:
    return SEEN_PREFIX + hashlib.sha256(signature.encode()).hexdigest()


@contextlib.asynccontextmanager
async def claim_once(redis: Redis | None, signature: str, ttl_seconds: int) -> AsyncIterator[bool]:
    """Yield True if this signed callback is new (handle it), False if it is a replay."""
    key = seen_key(signature)
    claimed = True
    if redis is not None:
        try:
            claimed = bool(await redis.set(key, "1", nx=True, ex=ttl_seconds))
        except RedisError:
            log.warning("webhook replay check skipped: Redis unavailable")
            redis = None
    if not claimed:
        log.info("replayed webhook ignored")
        yield False
        return
    try:
        yield True
    except BaseException:
        if redis is not None:
            with contextlib.suppress(RedisError):
                await redis.delete(key)
        raise
