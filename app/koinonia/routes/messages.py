"""Messages: record and enqueue (202), list, detail with delivery counts."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator
from quart import Blueprint, request
from quart_schema import document_response, tag, validate_querystring, validate_request

from koinonia.delivery import messaging, send_message
from koinonia.errors import BadRequest
from koinonia.models.messaging import DeliveryStatus, MessageStatus, TargetType
from koinonia.openapi import document_errors, document_idempotency
from koinonia.schemas import IDEMPOTENCY_KEY_PATTERN, ApiModel, Pagination
from koinonia.services.permissions import Permission
from koinonia.web import resources
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("messages", __name__, url_prefix="/api/messages")

MAX_CONTENT = 1600  # Twilio's limit for one message body (it splits into segments itself)
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_OFFSET = 1_000_000_000  # far past any list; within PostgreSQL's bigint OFFSET


UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TargetId = Annotated[str, Field(pattern=UUID_PATTERN)]

# The rule of the validator below, in the schema: a target other than "all" names its ids.
IDS_REQUIRED_UNLESS_ALL = {
    "if": {"properties": {"targetType": {"const": TargetType.ALL.value}}},
    "else": {"required": ["targetIds"], "properties": {"targetIds": {"minItems": 1}}},
}


class Target(ApiModel):
    schema_rules: ClassVar[dict[str, Any]] = IDS_REQUIRED_UNLESS_ALL

    target_type: TargetType
    target_ids: list[TargetId] = Field(
        default_factory=list,
        max_length=1000,
        description="member or group ids; required (at least one) unless targetType is all",
    )

    @model_validator(mode="after")
    def _ids_match_type(self) -> Target:
        if self.target_type != TargetType.ALL and not self.target_ids:
            raise ValueError(f"targetIds is required when targetType is {self.target_type}")
        return self


class MessageIn(Target):
    content: str = Field(min_length=1, max_length=MAX_CONTENT)


class MessageOut(ApiModel):
    id: uuid.UUID
    content: str
    target_type: TargetType
    target_ids: list[str]
    status: MessageStatus
    recipient_count: int = Field(description="opted-in members it was recorded for")
    created_by: uuid.UUID | None
    created_at: datetime


class CountedMessageOut(MessageOut):
    delivery_counts: dict[DeliveryStatus, int] = Field(description="deliveries by status")


class MessagePage(ApiModel):
    data: list[CountedMessageOut]
    pagination: Pagination


class DeliveryOut(ApiModel):
    id: uuid.UUID
    member_id: uuid.UUID | None
    phone: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    provider_message_id: str | None
    sent_at: datetime | None


class MessageDetailOut(CountedMessageOut):
    deliveries: list[DeliveryOut] = Field(description="the first 100, oldest first")


class MessageListQuery(ApiModel):
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


def idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key) is None:
        raise BadRequest(
            f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters, "
            "with no blank at either end"
        )
    return key


@bp.post("")
@tag(["messages"])
@require_permission(Permission.SEND_MESSAGES)
@validate_request(MessageIn)
@document_response(MessageOut, 202)
@document_errors(400, 404, 409, queue_full=True)
@document_idempotency
async def create_message(data: MessageIn) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Record the message and one delivery per opted-in recipient; sending happens in workers.

    A repeated request with the same ``Idempotency-Key`` creates nothing and answers the same.
    While the queue is at its memory high-water mark the answer is 503 ``queue_full`` with
    ``Retry-After``, and nothing is recorded.
    """
    recorded = await send_message.send_message(
        resources.sender(),
        church_id=current_church_id(),
        created_by_id=current_user().user_id,
        content=data.content,
        target_type=data.target_type,
        target_ids=data.target_ids,
        idempotency_key=idempotency_key(),
    )
    headers = {} if recorded.created else {"Idempotent-Replayed": "true"}
    return messaging.message_json(recorded.message), 202, headers


@bp.get("")
@tag(["messages"])
@require_permission(Permission.VIEW)
@validate_querystring(MessageListQuery)
@document_response(MessagePage, 200)
async def list_messages(query_args: MessageListQuery) -> dict[str, Any]:
    items, total = await messaging.list_messages(
        current_church_id(), limit=query_args.limit, offset=query_args.offset
    )
    counts = await messaging.delivery_counts([m.id for m in items])
    return {
        "data": [messaging.message_json(m, counts[m.id]) for m in items],
        "pagination": {"total": total, "limit": query_args.limit, "offset": query_args.offset},
    }


@bp.get("/<uuid:message_id>")
@tag(["messages"])
@require_permission(Permission.VIEW)
@document_response(MessageDetailOut, 200)
async def get_message(message_id: uuid.UUID) -> dict[str, Any]:
    church_id = current_church_id()
    message = await messaging.get_message(church_id, message_id)
    counts = await messaging.delivery_counts([message.id])
    body = messaging.message_json(message, counts[message.id])
    body["deliveries"] = await messaging.deliveries_of(church_id, message.id)
    return body
