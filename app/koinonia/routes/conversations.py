"""Conversations with members: list, messages, reply (queued like any message)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field
from quart import Blueprint
from quart_schema import tag, validate_querystring, validate_request

from koinonia.routes.messages import idempotency_key
from koinonia.schemas import ApiModel
from koinonia.services import conversations
from koinonia.services.permissions import Permission
from koinonia.web import resources
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("conversations", __name__, url_prefix="/api/conversations")


class PageQuery(ApiModel):
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0)


class ReplyIn(ApiModel):
    body: str = Field(min_length=1, max_length=1600)


@bp.get("")
@tag(["conversations"])
@require_permission(Permission.VIEW)
@validate_querystring(PageQuery)
async def list_conversations(query_args: PageQuery) -> dict[str, Any]:
    items, total = await conversations.list_conversations(
        current_church_id(), limit=query_args.limit, offset=query_args.offset
    )
    return {
        "data": items,
        "pagination": {"total": total, "limit": query_args.limit, "offset": query_args.offset},
    }


@bp.get("/<uuid:conversation_id>/messages")
@tag(["conversations"])
@require_permission(Permission.VIEW)
@validate_querystring(PageQuery)
async def conversation_messages(
    conversation_id: uuid.UUID, query_args: PageQuery
) -> dict[str, Any]:
    """Oldest first."""
    items = await conversations.messages_of(
        current_church_id(), conversation_id, limit=query_args.limit, offset=query_args.offset
    )
    return {"data": items}


@bp.post("/<uuid:conversation_id>/messages")
@tag(["conversations"])
@require_permission(Permission.SEND_MESSAGES)
@validate_request(ReplyIn)
async def reply(
    conversation_id: uuid.UUID, data: ReplyIn
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue a reply. With an ``Idempotency-Key``, a repeated request texts once and answers
    the first reply; 503 ``queue_full`` (nothing recorded) like any message."""
    entry, created = await conversations.reply(
        resources.sender(),
        church_id=current_church_id(),
        conversation_id=conversation_id,
        user_id=current_user().user_id,
        body=data.body,
        idempotency_key=idempotency_key(),
    )
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return conversations.message_json(entry), 202, headers
