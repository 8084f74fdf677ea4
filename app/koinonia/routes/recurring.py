"""Recurring messages: a message sent on a cron schedule (UTC) by the worker's minute job."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field, StrictBool
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_request

from koinonia.models.messaging import TargetType
from koinonia.openapi import document_errors, document_no_content
from koinonia.routes.messages import MAX_CONTENT, Target, TargetId
from koinonia.schemas import ApiModel
from koinonia.services import recurring
from koinonia.services.permissions import Permission
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("recurring", __name__, url_prefix="/api/recurring-messages")


class RecurringIn(Target):
    content: str = Field(min_length=1, max_length=MAX_CONTENT)
    schedule: str = Field(
        min_length=9, max_length=100, description="5-field cron, UTC", examples=["0 9 * * 0"]
    )
    active: StrictBool = True


class RecurringPatch(ApiModel):
    content: str | None = Field(default=None, min_length=1, max_length=MAX_CONTENT)
    target_type: TargetType | None = None
    target_ids: list[TargetId] | None = Field(default=None, max_length=1000)
    schedule: str | None = Field(default=None, min_length=9, max_length=100)
    active: StrictBool | None = None


class RecurringOut(ApiModel):
    id: uuid.UUID
    content: str
    target_type: TargetType
    target_ids: list[str]
    schedule: str = Field(description="5-field cron, UTC")
    next_run_at: datetime
    last_run_at: datetime | None
    active: bool
    created_at: datetime


class RecurringListOut(ApiModel):
    data: list[RecurringOut]


@bp.get("")
@tag(["recurring"])
@require_permission(Permission.VIEW)
@document_response(RecurringListOut, 200)
async def list_recurring() -> dict[str, Any]:
    items = await recurring.list_for(current_church_id())
    return {"data": [recurring.recurring_json(i) for i in items]}


@bp.post("")
@tag(["recurring"])
@require_permission(Permission.SEND_MESSAGES)
@validate_request(RecurringIn)
@document_response(RecurringOut, 201)
@document_errors(404)
async def create_recurring(data: RecurringIn) -> tuple[dict[str, Any], int]:
    item = await recurring.create(
        church_id=current_church_id(),
        created_by_id=current_user().user_id,
        content=data.content,
        target_type=data.target_type,
        target_ids=data.target_ids,
        schedule=data.schedule,
        active=data.active,
    )
    return recurring.recurring_json(item), 201


@bp.patch("/<uuid:recurring_id>")
@tag(["recurring"])
@require_permission(Permission.SEND_MESSAGES)
@validate_request(RecurringPatch)
@document_response(RecurringOut, 200)
async def update_recurring(recurring_id: uuid.UUID, data: RecurringPatch) -> dict[str, Any]:
    changes = {
        key: value
        for key, value in data.model_dump(exclude_unset=True, by_alias=True).items()
        if value is not None
    }
    item = await recurring.update(current_church_id(), recurring_id, changes)
    return recurring.recurring_json(item)


@bp.delete("/<uuid:recurring_id>")
@tag(["recurring"])
@require_permission(Permission.SEND_MESSAGES)
@document_no_content
async def delete_recurring(recurring_id: uuid.UUID) -> Response:
    await recurring.delete(current_church_id(), recurring_id)
    return Response(status=204)
