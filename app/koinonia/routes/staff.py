"""A church's staff: the people who run it, their roles, invites and ownership."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import EmailStr
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_request

from koinonia.models.core import Role
from koinonia.openapi import document_errors, document_no_content
from koinonia.schemas import ApiModel
from koinonia.services import staff
from koinonia.services.permissions import Permission
from koinonia.web.state import get_state
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("staff", __name__, url_prefix="/api/staff")


class StaffOut(ApiModel):
    id: uuid.UUID
    email: str
    first_name: str
    last_name: str
    role: Role
    created_at: datetime


class StaffListOut(ApiModel):
    data: list[StaffOut]


class RoleIn(ApiModel):
    role: Role


class InviteIn(ApiModel):
    email: EmailStr
    role: Role = Role.STAFF


class InviteOut(ApiModel):
    id: uuid.UUID
    email: str
    role: Role
    invited_by: uuid.UUID | None
    expires_at: datetime
    expired: bool
    created_at: datetime


class InviteCreatedOut(InviteOut):
    token: str


class InviteListOut(ApiModel):
    data: list[InviteOut]


class OwnershipOut(ApiModel):
    previous_owner: StaffOut
    owner: StaffOut


def _revocation_context() -> tuple[Any, Any]:
    state = get_state()
    return state.require_redis(), state.revocations


@bp.get("")
@tag(["staff"])
@require_permission(Permission.MANAGE_STAFF)
@document_response(StaffListOut, 200)
async def list_staff() -> dict[str, Any]:
    """Every user of the caller's church, oldest first."""
    return {"data": [staff.staff_json(u) for u in await staff.list_staff(current_church_id())]}


@bp.patch("/<uuid:user_id>")
@tag(["staff"])
@require_permission(Permission.MANAGE_STAFF)
@validate_request(RoleIn)
@document_response(StaffOut, 200)
@document_errors(409)
async def change_role(user_id: uuid.UUID, data: RoleIn) -> dict[str, Any]:
    """Change a user's role; their sessions (and WebSockets) end at once, so they log in
    again with the new role. Making, demoting or removing an owner takes an owner;
    demoting the church's last owner answers 409 ``last_owner``."""
    user = await staff.change_role(
        *_revocation_context(),
        current_church_id(),
        actor_role=current_user().role,
        user_id=user_id,
        role=data.role,
    )
    return staff.staff_json(user)


@bp.delete("/<uuid:user_id>")
@tag(["staff"])
@require_permission(Permission.MANAGE_STAFF)
@document_no_content
@document_errors(409)
async def remove_staff(user_id: uuid.UUID) -> Response:
    """Delete a user's account; their sessions (and WebSockets) end at once. Removing an
    owner takes an owner; the church's last owner cannot be removed (409 ``last_owner``)."""
    await staff.remove(
        *_revocation_context(),
        current_church_id(),
        actor_role=current_user().role,
        user_id=user_id,
    )
    return Response(status=204)


@bp.post("/<uuid:user_id>/ownership")
@tag(["staff"])
@require_permission(Permission.MANAGE_OWNERS)
@document_response(OwnershipOut, 200)
@document_errors(409)
async def transfer_ownership(user_id: uuid.UUID) -> dict[str, Any]:
    """Make this user owner and the caller admin. Both users' sessions end (the caller's
    too): each logs in again with the new role."""
    actor, target = await staff.transfer_ownership(
        *_revocation_context(),
        current_church_id(),
        actor_id=current_user().user_id,
        user_id=user_id,
    )
    return {"previousOwner": staff.staff_json(actor), "owner": staff.staff_json(target)}


@bp.get("/invites")
@tag(["staff"])
@require_permission(Permission.MANAGE_STAFF)
@document_response(InviteListOut, 200)
async def list_invites() -> dict[str, Any]:
    """Invites not yet accepted or cancelled, newest first (``expired`` ones included)."""
    return {"data": [staff.invite_json(i) for i in await staff.list_invites(current_church_id())]}


@bp.post("/invites")
@tag(["staff"])
@require_permission(Permission.MANAGE_STAFF)
@validate_request(InviteIn)
@document_response(InviteCreatedOut, 201)
@document_errors(409)
async def create_invite(data: InviteIn) -> tuple[dict[str, Any], int]:
    """Invite a person by email to join the church with a role.

    This service sends no email: the answer's ``token`` is the only copy of the invite's
    secret (only its hash is stored, and it is logged nowhere), so pass it on to the invitee
    yourself. They accept it with ``POST /api/auth/invites/accept`` before ``expiresAt``,
    once. Inviting the same email again replaces the earlier token. Inviting an owner takes
    an owner; an email that already has an account answers 409.
    """
    user = current_user()
    created, token = await staff.invite(
        current_church_id(),
        actor_id=user.user_id,
        actor_role=user.role,
        email=str(data.email),
        role=data.role,
        ttl_seconds=get_state().settings.staff_invite_ttl_seconds,
    )
    return {**staff.invite_json(created), "token": token}, 201


@bp.delete("/invites/<uuid:invite_id>")
@tag(["staff"])
@require_permission(Permission.MANAGE_STAFF)
@document_no_content
async def cancel_invite(invite_id: uuid.UUID) -> Response:
    """Cancel an invite: its token no longer works."""
    await staff.cancel_invite(current_church_id(), invite_id)
    return Response(status=204)
