"""A church's staff: invites, roles, removals and ownership transfer.

The rules, all read from the permission table (``services/permissions.py``):

- an invite names an email and a role; its token is shown once, to the inviter (the app
  sends no mail), and only its SHA-256 is stored; accepting it creates the account and
  consumes the invite in one transaction; inviting the same email again replaces the token;
- only a role with ``manage_owners`` may make, demote or remove an owner, or invite one;
- a church always keeps an owner: every change of roles in a church takes the church's row
  lock first (``SELECT ... FOR UPDATE`` in the change's transaction), so two demotions at
  once are serialised and the second one sees the first one's result;
- a user whose role changes, or who is removed, loses every session at once (and with them
  their WebSockets); they log in again to act with the new role.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from koinonia.errors import Conflict, Forbidden, NotFound, ServiceUnavailable
from koinonia.models.core import Church, Role, StaffInvite, User
from koinonia.services import auth
from koinonia.services.permissions import Permission, allows
from koinonia.stores import session_cache
from koinonia.stores.session_cache import RevocationListener


class LastOwner(Conflict):
    code = "last_owner"
    message = "A church must keep an owner: make someone else owner first"


class InviteNotFound(NotFound):
    code = "invite_not_found"
    message = "This invite is unknown, already used, cancelled or expired; ask for a new one"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def staff_json(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "firstName": user.first_name,
        "lastName": user.last_name,
        "role": str(user.role),
        "createdAt": user.created_at.isoformat(),
    }


def invite_json(invite: StaffInvite, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    return {
        "id": str(invite.id),
        "email": invite.email,
        "role": str(invite.role),
        "invitedBy": str(invite.invited_by_id) if invite.invited_by_id else None,  # type: ignore[attr-defined]
        "expiresAt": invite.expires_at.isoformat(),
        "expired": invite.expires_at <= now,
        "createdAt": invite.created_at.isoformat(),
    }


def _require_owner_rights(actor_role: str, *roles: str) -> None:
    if Role.OWNER in roles and not allows(actor_role, Permission.MANAGE_OWNERS):
        raise Forbidden(
            "Only an owner may make, invite, demote or remove an owner",
            details={"role": actor_role, "permission": str(Permission.MANAGE_OWNERS)},
        )


async def list_staff(church_id: uuid.UUID) -> list[User]:
    return await User.filter(church_id=church_id).order_by("created_at", "id")


# --- invites ---------------------------------------------------------------------------------


async def invite(
    church_id: uuid.UUID,
    *,
    actor_id: uuid.UUID,
    actor_role: str,
    email: str,
    role: Role,
    ttl_seconds: int,
) -> tuple[StaffInvite, str]:
    """A new invite and its token (returned once; only its hash is kept)."""
    _require_owner_rights(actor_role, role)
    email = auth.normalise_email(email)
    if await User.filter(email=email).exists():
        raise Conflict("An account with this email already exists")
    token = secrets.token_urlsafe(32)
    async with in_transaction():
        await StaffInvite.filter(church_id=church_id, email=email).delete()
        created = await StaffInvite.create(
            church_id=church_id,
            email=email,
            role=role,
            token_hash=token_hash(token),
            invited_by_id=actor_id,
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds),
        )
    return created, token


async def list_invites(church_id: uuid.UUID) -> list[StaffInvite]:
    return await StaffInvite.filter(church_id=church_id).order_by("-created_at", "id")


async def cancel_invite(church_id: uuid.UUID, invite_id: uuid.UUID) -> None:
    if not await StaffInvite.filter(id=invite_id, church_id=church_id).delete():
        raise NotFound("Invite not found")


async def accept_invite(*, token: str, password: str, first_name: str, last_name: str) -> User:
    """Create the invitee's account in the inviting church and consume the invite."""
    password_hash = await auth.hash_password(password)
    try:
        async with in_transaction():
            # Locked: two accepts of one token at once create one account.
            found = (
                await StaffInvite.filter(token_hash=token_hash(token)).select_for_update().first()
            )
            if found is None or found.expires_at <= datetime.now(UTC):
                raise InviteNotFound()
            user = await User.create(
                church_id=found.church_id,  # type: ignore[attr-defined]
                email=found.email,
                password_hash=password_hash,
                role=found.role,
                first_name=first_name,
                last_name=last_name,
            )
            await StaffInvite.filter(id=found.id).delete()
    except IntegrityError as exc:
        raise Conflict("An account with this email already exists") from exc
    return user


# --- roles and removal -----------------------------------------------------------------------


async def count_owners(church_id: uuid.UUID) -> int:
    return await User.filter(church_id=church_id, role=Role.OWNER).count()


async def _lock_church_staff(church_id: uuid.UUID) -> None:
    """The church's row lock, held to the end of the caller's transaction: every change of
    roles in a church waits here for the one before it."""
    await Church.filter(id=church_id).select_for_update().first()


async def _target(church_id: uuid.UUID, user_id: uuid.UUID) -> User:
    user = await User.get_or_none(id=user_id, church_id=church_id)
    if user is None:
        raise NotFound("Staff member not found")
    return user


async def _end_sessions(
    redis: Redis, listener: RevocationListener | None, user_ids: list[uuid.UUID]
) -> None:
    # After the commit: a login that read the old role is refused by the new generation.
    try:
        for user_id in user_ids:
            await session_cache.revoke_user(redis, listener, user_id)
    except RedisError as exc:
        raise ServiceUnavailable(
            "The change is saved, but the user's sessions could not be ended; "
            "repeat the request to end them"
        ) from exc


async def change_role(
    redis: Redis,
    listener: RevocationListener | None,
    church_id: uuid.UUID,
    *,
    actor_role: str,
    user_id: uuid.UUID,
    role: Role,
) -> User:
    async with in_transaction():
        await _lock_church_staff(church_id)
        user = await _target(church_id, user_id)
        _require_owner_rights(actor_role, str(user.role), role)
        if user.role == Role.OWNER and role != Role.OWNER and await count_owners(church_id) <= 1:
            raise LastOwner()
        user.role = role
        await user.save(update_fields=["role"])
    # Also when the role was already this one: repeating a request whose revocation failed
    # ends the sessions then.
    await _end_sessions(redis, listener, [user.id])
    return user


async def remove(
    redis: Redis,
    listener: RevocationListener | None,
    church_id: uuid.UUID,
    *,
    actor_role: str,
    user_id: uuid.UUID,
) -> None:
    """Delete the account (its messages stay, without an author)."""
    async with in_transaction():
        await _lock_church_staff(church_id)
        user = await _target(church_id, user_id)
        _require_owner_rights(actor_role, str(user.role))
        if user.role == Role.OWNER and await count_owners(church_id) <= 1:
            raise LastOwner()
        await User.filter(id=user.id).delete()
    await _end_sessions(redis, listener, [user.id])


async def transfer_ownership(
    redis: Redis,
    listener: RevocationListener | None,
    church_id: uuid.UUID,
    *,
    actor_id: uuid.UUID,
    user_id: uuid.UUID,
) -> tuple[User, User]:
    """The target becomes owner and the calling owner admin; both log in again."""
    if user_id == actor_id:
        raise Conflict("You are already an owner", code="already_owner")
    async with in_transaction():
        await _lock_church_staff(church_id)
        target = await _target(church_id, user_id)
        actor = await _target(church_id, actor_id)
        if actor.role != Role.OWNER:  # demoted since this session began
            raise Forbidden("Only an owner may transfer ownership")
        target.role, actor.role = Role.OWNER, Role.ADMIN
        await target.save(update_fields=["role"])
        await actor.save(update_fields=["role"])
    await _end_sessions(redis, listener, [actor.id, target.id])
    return actor, target
