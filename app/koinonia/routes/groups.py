"""Groups of the caller's church and their members."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_request

from koinonia.openapi import document_errors, document_no_content
from koinonia.routes.members import MemberOut
from koinonia.schemas import ApiModel
from koinonia.services import groups
from koinonia.services.permissions import Permission
from koinonia.web.tenancy import current_church_id, require_permission

bp = Blueprint("groups", __name__, url_prefix="/api/groups")


class GroupIn(ApiModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)


class GroupOut(ApiModel):
    id: uuid.UUID
    church_id: uuid.UUID
    name: str
    description: str
    created_at: datetime
    member_count: int


class GroupListOut(ApiModel):
    data: list[GroupOut]


class GroupDetailOut(GroupOut):
    members: list[MemberOut] = Field(description="by last name, then first name")


class GroupUpdatedOut(ApiModel):
    id: uuid.UUID
    church_id: uuid.UUID
    name: str
    description: str
    created_at: datetime


class AddedOut(ApiModel):
    added: int = Field(description="members newly in the group")


class RemovedOut(ApiModel):
    removed: int = Field(description="members no longer in the group")


class GroupPatch(ApiModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class GroupMembersIn(ApiModel):
    member_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


@bp.get("")
@tag(["groups"])
@require_permission(Permission.VIEW)
@document_response(GroupListOut, 200)
async def list_groups() -> dict:
    return {"data": await groups.list_groups(current_church_id())}


@bp.post("")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupIn)
@document_response(GroupOut, 201)
@document_errors(409)
async def create_group(data: GroupIn) -> tuple[dict, int]:
    group = await groups.create_group(current_church_id(), data.name, data.description)
    return groups.group_json(group, 0), 201


@bp.get("/<uuid:group_id>")
@tag(["groups"])
@require_permission(Permission.VIEW)
@document_response(GroupDetailOut, 200)
async def get_group(group_id: uuid.UUID) -> dict:
    return await groups.group_detail(current_church_id(), group_id)


@bp.patch("/<uuid:group_id>")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupPatch)
@document_response(GroupUpdatedOut, 200)
@document_errors(409)
async def update_group(group_id: uuid.UUID, data: GroupPatch) -> dict:
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    group = await groups.update_group(current_church_id(), group_id, changes)
    return groups.group_json(group)


@bp.delete("/<uuid:group_id>")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@document_no_content
async def delete_group(group_id: uuid.UUID) -> Response:
    await groups.delete_group(current_church_id(), group_id)
    return Response(status=204)


@bp.post("/<uuid:group_id>/members")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupMembersIn)
@document_response(AddedOut, 200)
async def add_group_members(group_id: uuid.UUID, data: GroupMembersIn) -> dict:
    added = await groups.add_members(current_church_id(), group_id, data.member_ids)
    return {"added": added}


@bp.delete("/<uuid:group_id>/members")
@tag(["groups"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(GroupMembersIn)
@document_response(RemovedOut, 200)
async def remove_group_members(group_id: uuid.UUID, data: GroupMembersIn) -> dict:
    removed = await groups.remove_members(current_church_id(), group_id, data.member_ids)
    return {"removed": removed}
