"""Groups of the caller's church and their members."""

from __future__ import annotations

import uuid

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import tag, validate_request

from koinonia.schemas import ApiModel
from koinonia.services import groups
from koinonia.services.permissions import Permission
from koinonia.web.tenancy import current_church_id, require_permission

bp = Blueprint("groups", __name__, url_prefix="/api/groups")


class GroupIn(ApiModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)


class GroupPatch(ApiModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class GroupMembersIn(ApiModel):
    member_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


@bp.get("")
@tag(["groups"])
@require_permission(Permission.VIEW)
async def list_groups() -> dict:
    return {"data": await groups.list_groups(current_church_id())}


@bp.post("")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupIn)
async def create_group(data: GroupIn) -> tuple[dict, int]:
    group = await groups.create_group(current_church_id(), data.name, data.description)
    return groups.group_json(group, 0), 201


@bp.get("/<uuid:group_id>")
@tag(["groups"])
@require_permission(Permission.VIEW)
async def get_group(group_id: uuid.UUID) -> dict:
    return await groups.group_detail(current_church_id(), group_id)


@bp.patch("/<uuid:group_id>")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupPatch)
async def update_group(group_id: uuid.UUID, data: GroupPatch) -> dict:
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    group = await groups.update_group(current_church_id(), group_id, changes)
    return groups.group_json(group)


@bp.delete("/<uuid:group_id>")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
async def delete_group(group_id: uuid.UUID) -> Response:
    await groups.delete_group(current_church_id(), group_id)
    return Response(status=204)


@bp.post("/<uuid:group_id>/members")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupMembersIn)
async def add_group_members(group_id: uuid.UUID, data: GroupMembersIn) -> dict:
    added = await groups.add_members(current_church_id(), group_id, data.member_ids)
    return {"added": added}


@bp.delete("/<uuid:group_id>/members")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupMembersIn)
async def remove_group_members(group_id: uuid.UUID, data: GroupMembersIn) -> dict:
    removed = await groups.remove_members(current_church_id(), group_id, data.member_ids)
    return {"removed": removed}
