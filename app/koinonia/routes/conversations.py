"""Conversations with members: list, messages, reply (queued like any message)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field
from quart import Blueprint
from quart_schema import document_response, tag, validate_querystring, validate_request

from koinonia.models.messaging import Direction
from koinonia.openapi import document_errors, document_idempotency
from koinonia.routes.messages import MAX_OFFSET, idempotency_key
from koinonia.schemas import E164_PATTERN, ApiModel, Pagination
from koinonia.services import conversations
from koinonia.services.permissions import Permission
from koinonia.web import resources
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("conversations", __name__, url_prefix="/api/conversations")


class PageQuery(ApiModel):
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class ConversationMemberOut(ApiModel):
    id: uuid.UUID
    first_name: str
    last_name: str
    phone: str = Field(pattern=E164_PATTERN)
    opt_in_sms: bool


class ConversationOut(ApiModel):
    id: uuid.UUID
    member: ConversationMemberOut
    last_message_at: datetime | None
    created_at: datetime


class ConversationPage(ApiModel):
    data: list[ConversationOut]
    pagination: Pagination


class ConversationMessageOut(ApiModel):
    id: uuid.UUID
    direction: Direction
    body: str
    delivery_id: uuid.UUID | None = Field(description="for an outbound text: its delivery")
    created_at: datetime


class ConversationMessagesOut(ApiModel):
    data: list[ConversationMessageOut]


class ReplyIn(ApiModel):
    body: str = Field(min_length=1, max_length=1600)


@bp.get("")
@tag(["conversations"])
@require_permission(Permission.VIEW)
@validate_querystring(PageQuery)
@document_response(ConversationPage, 200)
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
@document_response(ConversationMessagesOut, 200)
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
@document_response(ConversationMessageOut, 202)
@document_errors(400, 409, queue_full=True)
@document_idempotency
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
