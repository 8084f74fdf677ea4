"""Server-side sessions in Redis, so any app server can serve any request (no sticky sessions).

The client holds an opaque random token (as a bearer token or in the session cookie: both
name the same session). Redis stores the session under the SHA-256 of the token, so a dump
of Redis does not yield usable tokens. Each user also has a set of their session ids (the
index), which is how logout-everywhere (password change) revokes them all, and a generation
number that every such revocation increments.

Creating and revoking are each one Lua script, so they never interleave: a session created
while a user's sessions are being revoked is either revoked with them or refused, and the
index always names every live session of the user. A login reads the user's generation
before it reads the password hash; the session is created only if the generation is still
the same, so a login that checked the old password cannot outlive a password change that
landed meanwhile. ``koinonia revoke-sessions`` moves a generation of every session on before
it deletes them, so a login in flight then is refused the same way.

Every revocation is also published on ``REVOCATION_CHANNEL`` (the revoked session ids, or
``*`` for all), so each process drops the sessions from its in-process cache
(``stores.session_cache``) and closes their WebSockets.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import asdict, dataclass

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SESSION_PREFIX = "session:"
USER_SESSIONS_PREFIX = "user-sessions:"
USER_GENERATION_PREFIX = "user-session-generation:"
# Moved on by every revoke-all: one counter, so a revoke-all is one INCR, not one per user.
ALL_SESSIONS_GENERATION_KEY = "all-sessions-generation"
REVOCATION_CHANNEL = "session-revocations"
# The message that revokes every session (``koinonia revoke-sessions``).
REVOKE_ALL = "*"
# A user's generation before any revocation (the key does not exist yet).
FIRST_GENERATION = "0"


@dataclass(frozen=True)
class SessionData:
    session_id: str
    user_id: str
    church_id: str | None
    role: str
    is_operator: bool
    created_at: float


class GenerationChanged(Exception):
    """The user's sessions were revoked (password change, role change, removal) after the
    login read the password."""


class AllSessionsRevoked(GenerationChanged):
    """Every session was revoked (``koinonia revoke-sessions``) after the login read the
    password."""


@dataclass(frozen=True)
class Generation:
    """What a login read before it checked the password: the user's generation and the
    generation of all sessions."""

    user: str
    everyone: str


# KEYS: session, user index, user generation, all-sessions generation. ARGV: session JSON,
# TTL, the user's and everyone's generation as the login read them, session id, the
# generation of a missing key. 1 = created, 0 = refused (the user's), -1 = refused (all).
_CREATE_SCRIPT = """
if (redis.call('GET', KEYS[4]) or ARGV[6]) ~= ARGV[4] then
    return -1
end
if (redis.call('GET', KEYS[3]) or ARGV[6]) ~= ARGV[3] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: user index, user generation. ARGV: the session key prefix. Returns the session ids
# that were in the index. The session keys are derived from the index inside the script (so
# not declared in KEYS): fine on the single Redis this service uses, not on Redis Cluster.
_REVOKE_USER_SCRIPT = """
redis.call('INCR', KEYS[2])
local ids = redis.call('SMEMBERS', KEYS[1])
for _, id in ipairs(ids) do
    redis.call('DEL', ARGV[1] .. id)
end
redis.call('DEL', KEYS[1])
return ids
"""


def session_id_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def valid_token(token: str | None) -> bool:
    return bool(token) and len(token) <= 256  # type: ignore[arg-type]


async def user_generation(redis: Redis, user_id: uuid.UUID | str) -> Generation:
    """Read before the password hash; passed to ``create_session``."""
    user, everyone = await redis.mget(
        USER_GENERATION_PREFIX + str(user_id), ALL_SESSIONS_GENERATION_KEY
    )
    return Generation(
        user=_text(user) if user is not None else FIRST_GENERATION,
        everyone=_text(everyone) if everyone is not None else FIRST_GENERATION,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def create_session(
    redis: Redis,
    *,
    user_id: uuid.UUID,
    church_id: uuid.UUID | None,
    role: str,
    is_operator: bool,
    ttl_seconds: int,
    generation: Generation,
) -> tuple[str, SessionData]:
    """Raises ``GenerationChanged`` (``AllSessionsRevoked``) if the user's sessions (every
    session) were revoked since ``generation`` was read."""
    token = new_token()
    data = SessionData(
        session_id=session_id_of(token),
        user_id=str(user_id),
        church_id=str(church_id) if church_id else None,
        role=role,
        is_operator=is_operator,
        created_at=time.time(),
    )
    created = await redis.register_script(_CREATE_SCRIPT)(
        keys=[
            SESSION_PREFIX + data.session_id,
            USER_SESSIONS_PREFIX + data.user_id,
            USER_GENERATION_PREFIX + data.user_id,
            ALL_SESSIONS_GENERATION_KEY,
        ],
        args=[
            orjson.dumps(asdict(data)),
            ttl_seconds,
            generation.user,
            generation.everyone,
            data.session_id,
            FIRST_GENERATION,
        ],
    )
    if created == -1:
        raise AllSessionsRevoked()
    if not created:
        raise GenerationChanged()
    return token, data


async def read_session(redis: Redis, session_id: str) -> SessionData | None:
    """The session from Redis (never from the in-process cache)."""
    raw = await redis.get(SESSION_PREFIX + session_id)
    if raw is None:
        return None
    return SessionData(**orjson.loads(raw))


async def get_session(redis: Redis, token: str) -> SessionData | None:
    if not valid_token(token):
        return None
    return await read_session(redis, session_id_of(token))


async def publish_revocation(redis: Redis, session_ids: list[str] | str) -> None:
    """Tell every process to drop these sessions (a list of ids, or ``REVOKE_ALL``).

    A process that misses the message (its subscription down) bypasses its cache until it
    is subscribed again, and no cached entry outlives the cache's bound anyway; so a failed
    publish is logged, not raised: the revocation itself is done.
    """
    message = session_ids if isinstance(session_ids, str) else orjson.dumps(session_ids)
    try:
        await redis.publish(REVOCATION_CHANNEL, message)
    except RedisError:
        log.warning("could not publish a session revocation; caches drop it within their bound")


async def revoke_session(redis: Redis, session: SessionData) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(SESSION_PREFIX + session.session_id)
        pipe.srem(USER_SESSIONS_PREFIX + session.user_id, session.session_id)
        await pipe.execute()
    await publish_revocation(redis, [session.session_id])


async def revoke_user_sessions(redis: Redis, user_id: uuid.UUID | str) -> list[str]:
    """Revoke every session of a user (password change) and refuse the logins in flight;
    returns the ids of the sessions that were indexed."""
    user_id = str(user_id)
    session_ids = await redis.register_script(_REVOKE_USER_SCRIPT)(
        keys=[USER_SESSIONS_PREFIX + user_id, USER_GENERATION_PREFIX + user_id],
        args=[SESSION_PREFIX],
    )
    ids = [_text(i) for i in session_ids]
    if ids:
        await publish_revocation(redis, ids)
    return ids


async def revoke_all_sessions(redis: Redis, *, batch_size: int = 500) -> int:
    """Revoke every session of every user (secret rotation: everyone logs in again).

    SCAN, not KEYS: the app's Redis user may not run KEYS (it blocks the server), and SCAN
    walks a large keyspace in small steps while the service keeps answering. The generation
    of all sessions moves on first, so a login that checked its password before it and
    creates its session after the scan passed is refused. Returns how many sessions were live.
    """
    await redis.incr(ALL_SESSIONS_GENERATION_KEY)
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
    await publish_revocation(redis, REVOKE_ALL)
    return revoked
