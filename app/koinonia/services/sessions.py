"""Server-side sessions in Redis, so any app server can serve any request (no sticky sessions).

The client holds an opaque random token (as a bearer token or in the session cookie: both
name the same session). Redis stores the session under the SHA-256 of the token, so a dump
of Redis does not yield usable tokens. Each user also has a set of their session ids, which
is how logout-everywhere (password change) revokes them all.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

SESSION_PREFIX = "session:"
USER_SESSIONS_PREFIX = "user-sessions:"


@dataclass(frozen=True)
class SessionData:
    session_id: str
    user_id: str
    church_id: str | None
    role: str
    is_operator: bool
    created_at: float


def _session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


async def create_session(
    redis: Redis,
    *,
    user_id: uuid.UUID,
    church_id: uuid.UUID | None,
    role: str,
    is_operator: bool,
    ttl_seconds: int,
) -> tuple[str, SessionData]:
    token = new_token()
    data = SessionData(
        session_id=_session_id(token),
        user_id=str(user_id),
        church_id=str(church_id) if church_id else None,
        role=role,
        is_operator=is_operator,
        created_at=time.time(),
    )
    user_key = USER_SESSIONS_PREFIX + data.user_id
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(SESSION_PREFIX + data.session_id, json.dumps(asdict(data)), ex=ttl_seconds)
        pipe.sadd(user_key, data.session_id)
        pipe.expire(user_key, ttl_seconds)
        await pipe.execute()
    return token, data


async def get_session(redis: Redis, token: str) -> SessionData | None:
    if not token or len(token) > 256:
        return None
    raw = await redis.get(SESSION_PREFIX + _session_id(token))
    if raw is None:
        return None
    return SessionData(**json.loads(raw))


async def revoke_session(redis: Redis, session: SessionData) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(SESSION_PREFIX + session.session_id)
        pipe.srem(USER_SESSIONS_PREFIX + session.user_id, session.session_id)
        await pipe.execute()


async def revoke_user_sessions(redis: Redis, user_id: uuid.UUID | str) -> int:
    """Revoke every session of a user (password change); returns how many were live."""
    user_key = USER_SESSIONS_PREFIX + str(user_id)
    session_ids = await redis.smembers(user_key)
    async with redis.pipeline(transaction=True) as pipe:
        for session_id in session_ids:
            pipe.delete(SESSION_PREFIX + session_id)
        pipe.delete(user_key)
        results = await pipe.execute()
    return sum(int(r) for r in results[:-1])


async def revoke_all_sessions(redis: Redis, *, batch_size: int = 500) -> int:
    """Revoke every session of every user (secret rotation: everyone logs in again).

    SCAN, not KEYS: the app's Redis user may not run KEYS (it blocks the server), and SCAN
    walks a large keyspace in small steps while the service keeps answering. Returns how
    many sessions were live.
    """
    revoked = 0
    for pattern, counts in ((SESSION_PREFIX + "*", True), (USER_SESSIONS_PREFIX + "*", False)):
        batch: list[str] = []
        async for key in redis.scan_iter(match=pattern, count=batch_size):
            batch.append(key)
            if len(batch) >= batch_size:
                deleted = await redis.delete(*batch)
                revoked += deleted if counts else 0
                batch.clear()
        if batch:
            deleted = await redis.delete(*batch)
            revoked += deleted if counts else 0
    return revoked
