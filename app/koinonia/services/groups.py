"""Groups of members within a church, and their membership (all data access here)."""

from __future__ import annotations

import uuid
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.functions import Count

from koinonia.errors import Conflict, NotFound
from koinonia.models.core import Group, GroupMembership, Member
from koinonia.services.members import member_json


def group_json(group: Group, member_count: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(group.id),
        "churchId": str(group.church_id),  # type: ignore[attr-defined]
        "name": group.name,
        "description": group.description,
        "createdAt": group.created_at.isoformat(),
    }
    if member_count is not None:
        body["memberCount"] = member_count
    return body


async def list_groups(church_id: uuid.UUID) -> list[dict[str, Any]]:
    groups = (
        await Group.filter(church_id=church_id)
        .annotate(member_count=Count("memberships"))
        .order_by("name")
    )
    return [group_json(g, g.member_count) for g in groups]  # type: ignore[attr-defined]


async def get_group(church_id: uuid.UUID, group_id: uuid.UUID) -> Group:
    group = await Group.get_or_none(id=group_id, church_id=church_id)
    if group is None:
        raise NotFound("Group not found")
    return group


async def group_detail(church_id: uuid.UUID, group_id: uuid.UUID) -> dict[str, Any]:
    group = await get_group(church_id, group_id)
    group_members = await Member.filter(memberships__group_id=group.id).order_by(
        "last_name", "first_name"
    )
    body = group_json(group, len(group_members))
    body["members"] = [member_json(m) for m in group_members]
    return body


async def create_group(church_id: uuid.UUID, name: str, description: str) -> Group:
    try:
        return await Group.create(church_id=church_id, name=name, description=description)
    except IntegrityError:
        raise Conflict("A group with this name already exists") from None


async def update_group(church_id: uuid.UUID, group_id: uuid.UUID, changes: dict[str, Any]) -> Group:
    group = await get_group(church_id, group_id)
    for name, value in changes.items():
        setattr(group, name, value)
    try:
        await group.save()
    except IntegrityError:
        raise Conflict("A group with this name already exists") from None
    return group


async def delete_group(church_id: uuid.UUID, group_id: uuid.UUID) -> None:
    if not await Group.filter(id=group_id, church_id=church_id).delete():
        raise NotFound("Group not found")


async def _church_member_ids(church_id: uuid.UUID, member_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """The given ids that are members of this church; 404 naming the others."""
    wanted = set(member_ids)
    found = set(
        await Member.filter(church_id=church_id, id__in=list(wanted)).values_list("id", flat=True)
    )
    missing = wanted - found
    if missing:
        raise NotFound(
            "Some members were not found", details={"memberIds": sorted(str(m) for m in missing)}
        )
    return found


async def add_members(
    church_id: uuid.UUID, group_id: uuid.UUID, member_ids: list[uuid.UUID]
) -> int:
    group = await get_group(church_id, group_id)
    ids = await _church_member_ids(church_id, member_ids)
    existing = set(
        await GroupMembership.filter(group_id=group.id, member_id__in=list(ids)).values_list(
            "member_id", flat=True
        )
    )
    new = [GroupMembership(group_id=group.id, member_id=m) for m in ids - existing]
    if new:
        await GroupMembership.bulk_create(new, ignore_conflicts=True)
    return len(new)


async def remove_members(
    church_id: uuid.UUID, group_id: uuid.UUID, member_ids: list[uuid.UUID]
) -> int:
    group = await get_group(church_id, group_id)
    return await GroupMembership.filter(group_id=group.id, member_id__in=member_ids).delete()
