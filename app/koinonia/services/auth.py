"""Accounts: registration, login, password change; argon2id hashes.

Wrong password and unknown email fail the same way (``InvalidCredentials``), and an unknown
email still costs one hash verification, so neither the answer nor its timing tells an
attacker which emails exist.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from koinonia.errors import Conflict, Unauthorized
from koinonia.models.core import Church, Role, User
from koinonia.services import sessions
from koinonia.services.sessions import SessionData

_hasher = PasswordHasher()
# Verified against when the email is unknown, to spend the same time as a real check.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class InvalidCredentials(Unauthorized):
    code, message = "invalid_credentials", "Invalid email or password"


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow; keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


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


async def authenticate(email: str, password: str) -> User:
    user = await User.get_or_none(email=normalise_email(email))
    if user is None:
        await verify_password(_DUMMY_HASH, password)
        raise InvalidCredentials()
    if not await verify_password(user.password_hash, password):
        raise InvalidCredentials()
    return user


@dataclass(frozen=True)
class LoginResult:
    token: str
    session: SessionData
    user: User


async def login(redis: Redis, email: str, password: str, ttl_seconds: int) -> LoginResult:
    user = await authenticate(email, password)
    return await start_session(redis, user, ttl_seconds)


async def start_session(redis: Redis, user: User, ttl_seconds: int) -> LoginResult:
    token, session = await sessions.create_session(
        redis,
        user_id=user.id,
        church_id=user.church_id,  # type: ignore[attr-defined]
        role=str(user.role),
        is_operator=user.is_operator,
        ttl_seconds=ttl_seconds,
    )
    return LoginResult(token=token, session=session, user=user)


async def change_password(
    redis: Redis, user_id: uuid.UUID, current_password: str, new_password: str
) -> User:
    """Set a new password and revoke every session of the user (the caller logs in again)."""
    user = await User.get(id=user_id)
    if not await verify_password(user.password_hash, current_password):
        raise InvalidCredentials("Current password is wrong")
    user.password_hash = await hash_password(new_password)
    await user.save(update_fields=["password_hash"])
    await sessions.revoke_user_sessions(redis, user.id)
    return user


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
