"""Scheduled messages: one message at a time given in the church's time zone."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field
from quart import Blueprint
from quart_schema import document_response, tag, validate_querystring, validate_request

from koinonia.models.messaging import ScheduledStatus, TargetType
from koinonia.openapi import document_errors
from koinonia.routes.messages import MAX_CONTENT, MAX_OFFSET, Target
from koinonia.schemas import ApiModel, Pagination
from koinonia.services import scheduled
from koinonia.services.permissions import Permission
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("scheduled", __name__, url_prefix="/api/scheduled-messages")


class ScheduledIn(Target):
    content: str = Field(min_length=1, max_length=MAX_CONTENT)
    send_at: datetime = Field(
        description="When to send: a local time in the church's time zone "
        "(`2025-06-01T09:30`, see GET /api/church/settings), or an instant with an offset "
        "(`2025-06-01T14:30:00Z`). In the future, at most 366 days ahead; sent within the "
        "minute."
    )


class ScheduledOut(ApiModel):
    id: uuid.UUID
    content: str
    target_type: TargetType
    target_ids: list[str]
    send_at: datetime = Field(description="UTC")
    send_at_local: datetime = Field(description="in ``timezone``")
    timezone: str = Field(description="the church's time zone when it was scheduled")
    status: ScheduledStatus
    message_id: uuid.UUID | None = Field(description="the message it became, once sent")
    last_error: str | None
    created_by: uuid.UUID | None
    created_at: datetime
    sent_at: datetime | None
    cancelled_at: datetime | None


class ScheduledPage(ApiModel):
    data: list[ScheduledOut]
    pagination: Pagination


class ScheduledListQuery(ApiModel):
    status: ScheduledStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


@bp.get("")
@tag(["scheduled"])
@require_permission(Permission.VIEW)
@validate_querystring(ScheduledListQuery)
@document_response(ScheduledPage, 200)
async def list_scheduled(query_args: ScheduledListQuery) -> dict[str, Any]:
    """Soonest first."""
    items, total = await scheduled.list_for(
        current_church_id(), query_args.status, limit=query_args.limit, offset=query_args.offset
    )
    return {
        "data": [scheduled.scheduled_json(i) for i in items],
        "pagination": {"total": total, "limit": query_args.limit, "offset": query_args.offset},
    }


@bp.post("")
@tag(["scheduled"])
@require_permission(Permission.SEND_MESSAGES)
@validate_request(ScheduledIn)
@document_response(ScheduledOut, 201)
@document_errors(404)
async def create_scheduled(data: ScheduledIn) -> tuple[dict[str, Any], int]:
    """Schedule a message; the worker sends it once at ``sendAt`` (to the members opted in
    then)."""
    item = await scheduled.create(
        church_id=current_church_id(),
        created_by_id=current_user().user_id,
        content=data.content,
        target_type=data.target_type,
        target_ids=data.target_ids,
        send_at=data.send_at,
    )
    return scheduled.scheduled_json(item), 201


@bp.get("/<uuid:scheduled_id>")
@tag(["scheduled"])
@require_permission(Permission.VIEW)
@document_response(ScheduledOut, 200)
async def get_scheduled(scheduled_id: uuid.UUID) -> dict[str, Any]:
    return scheduled.scheduled_json(await scheduled.get(current_church_id(), scheduled_id))


@bp.post("/<uuid:scheduled_id>/cancel")
@tag(["scheduled"])
@require_permission(Permission.SEND_MESSAGES)
@document_response(ScheduledOut, 200)
@document_errors(409)
async def cancel_scheduled(scheduled_id: uuid.UUID) -> dict[str, Any]:
    """Cancel while it is still ``scheduled``; once the worker has taken it (``sending``,
    ``sent``) the answer is 409 ``not_cancellable``."""
    item = await scheduled.cancel(current_church_id(), scheduled_id)
    return scheduled.scheduled_json(item)
