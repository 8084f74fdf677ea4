"""Accounts: registration, login, password change; argon2id hashes.

Wrong password and unknown email fail the same way (``InvalidCredentials``), and an unknown
email still costs one hash verification, so neither the answer nor its timing tells an
attacker which emails exist.

Brute force: every login attempt counts against its (normalised) email in Redis, known or
not; after ``login_max_failures`` failures within ``login_lockout_seconds`` the email is
locked (429 + ``Retry-After``, even with the right password) until the key expires. A
successful login clears the count.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from koinonia.errors import Conflict, RateLimited, ServiceUnavailable, Unauthorized
from koinonia.models.core import Church, Role, User
from koinonia.stores import sessions
from koinonia.stores.sessions import SessionData

T = TypeVar("T")

_hasher = PasswordHasher()
# One argon2 computation at a time per process. Each already spreads over the cores (its
# `parallelism` lanes are threads) and holds `memory_cost` (64 MiB) while it runs: more at
# once do not finish sooner, they only multiply the memory (a burst of 12 logins took the
# API from 240 MiB to 1 GiB with asyncio's default pool of cpu + 4 threads).
_hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2")
# Verified against when the email is unknown, to spend the same time as a real check.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class InvalidCredentials(Unauthorized):
    code, message = "invalid_credentials", "Invalid email or password"


class LoginLocked(RateLimited):
    code, message = "login_locked", "Too many failed logins for this account; try again later"


LOGIN_FAILURES_PREFIX = "login-failures:"


def normalise_email(email: str) -> str:
    return email.strip().lower()


def login_failures_key(email: str) -> str:
    # Hashed so that Redis does not hold a list of the emails people tried.
    return LOGIN_FAILURES_PREFIX + hashlib.sha256(normalise_email(email).encode()).hexdigest()


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow; keep it off the event loop.
    return await asyncio.get_running_loop().run_in_executor(_hashing, _hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.get_running_loop().run_in_executor(_hashing, check)


async def create_user(
    *,
    email: str,
    password: str,
    church: Church | None,
    role: Role = Role.STAFF,
    is_operator: bool = False,
    first_name: str = "",
    last_name: str = "",
) -> User:
    try:
        return await User.create(
            email=normalise_email(email),
            password_hash=await hash_password(password),
            church=church,
            role=role,
            is_operator=is_operator,
            first_name=first_name,
            last_name=last_name,
        )
    except IntegrityError as exc:
        raise Conflict("An account with this email already exists") from exc


async def register_church(
    *, church_name: str, email: str, password: str, first_name: str, last_name: str
) -> tuple[Church, User]:
    if await User.filter(email=normalise_email(email)).exists():
        raise Conflict("An account with this email already exists")
    password_hash = await hash_password(password)
    try:
        async with in_transaction():
            church = await Church.create(name=church_name)
            user = await User.create(
                church=church,
                email=normalise_email(email),
                password_hash=password_hash,
                role=Role.OWNER,
                first_name=first_name,
                last_name=last_name,
            )
    except IntegrityError as exc:
        raise Conflict("An account with this email already exists") from exc
    return church, user


class PasswordChangedDuringLogin(Unauthorized):
    code = "password_changed"
    message = "The password was changed while logging in; log in again"


class SessionsRevokedDuringLogin(Unauthorized):
    code = "sessions_revoked"
    message = "Every session was revoked while logging in; log in again"


async def authenticate(redis: Redis, email: str, password: str) -> tuple[User, sessions.Generation]:
    """The user and their session generation, read before the password hash was."""
    user = await User.get_or_none(email=normalise_email(email))
    if user is None:
        await verify_password(_DUMMY_HASH, password)
        raise InvalidCredentials()
    generation = await _redis_value(sessions.user_generation(redis, user.id))
    # Read again, after the generation: a password change, role change or removal saved
    # before this read is what the session gets; one saved later has also moved the
    # generation on by the time the session is created, which is then refused.
    current = await User.get_or_none(id=user.id)
    if current is None or not await verify_password(current.password_hash, password):
        raise InvalidCredentials()
    return current, generation


@dataclass(frozen=True)
class LoginResult:
    token: str
    session: SessionData
    user: User


async def login(
    redis: Redis,
    email: str,
    password: str,
    ttl_seconds: int,
    *,
    max_failures: int,
    lockout_seconds: int,
) -> LoginResult:
    key = login_failures_key(email)
    # Fail closed when Redis is down: no session could be issued anyway (sessions live only
    # in Redis), and checking passwords without counting would hand an attacker unlimited
    # guesses for as long as the outage lasts.
    try:
        # The attempt is counted before the password is checked, so that concurrent guesses
        # cannot all slip in under the limit; a success deletes the count again. The window
        # starts at the first failure (NX: later attempts do not extend it).
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, lockout_seconds, nx=True)
            pipe.ttl(key)
            attempts, _, ttl = await pipe.execute()
    except RedisError as exc:
        raise ServiceUnavailable("Login unavailable: session store unreachable") from exc
    if attempts > max_failures:
        raise LoginLocked(max(int(ttl), 1))
    try:
        user, generation = await authenticate(redis, email, password)
    except InvalidCredentials:
        if attempts == max_failures:
            # The failure that locks the account: locked for the whole period from now.
            await _redis_value(redis.expire(key, lockout_seconds))
        raise
    await _redis_value(redis.delete(key))
    return await start_session(redis, user, ttl_seconds, generation)


async def _redis_value(call: Awaitable[T]) -> T:
    try:
        return await call
    except RedisError as exc:
        raise ServiceUnavailable("Login unavailable: session store unreachable") from exc


async def start_session(
    redis: Redis,
    user: User,
    ttl_seconds: int,
    generation: sessions.Generation | None = None,
) -> LoginResult:
    """``generation``: as read before the password was checked; a new account, which no
    revocation can have aimed at yet, reads it now."""
    try:
        if generation is None:
            generation = await _redis_value(sessions.user_generation(redis, user.id))
        token, session = await _redis_value(
            sessions.create_session(
                redis,
                user_id=user.id,
                church_id=user.church_id,  # type: ignore[attr-defined]
                role=str(user.role),
                is_operator=user.is_operator,
                ttl_seconds=ttl_seconds,
                generation=generation,
            )
        )
    except sessions.AllSessionsRevoked:
        raise SessionsRevokedDuringLogin() from None
    except sessions.GenerationChanged:
        raise PasswordChangedDuringLogin() from None
    return LoginResult(token=token, session=session, user=user)


async def change_password(
    redis: Redis, user_id: uuid.UUID, current_password: str, new_password: str
) -> list[str]:
    """Set a new password and revoke every session of the user (the caller logs in again);
    returns the revoked session ids."""
    user = await User.get(id=user_id)
    if not await verify_password(user.password_hash, current_password):
        raise InvalidCredentials("Current password is wrong")
    user.password_hash = await hash_password(new_password)
    await user.save(update_fields=["password_hash"])
    # After the hash is saved: a login that read the old hash then finds a newer generation.
    return await sessions.revoke_user_sessions(redis, user.id)


def user_json(user: User) -> dict[str, object]:
    return {
        "id": str(user.id),
        "email": user.email,
        "firstName": user.first_name,
        "lastName": user.last_name,
        "role": str(user.role),
        "churchId": str(user.church_id) if user.church_id else None,  # type: ignore[attr-defined]
        "isOperator": user.is_operator,
    }
