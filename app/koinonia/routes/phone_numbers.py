"""A church's own phone numbers (owners), the same for operators across churches, and the
texts that reached a number no church has (operators)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field, field_validator
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_querystring, validate_request

from koinonia.models.messaging import LinkStatus
from koinonia.openapi import document_errors, document_no_content
from koinonia.schemas import E164_PATTERN, ApiModel
from koinonia.services import phone_links
from koinonia.services.permissions import Permission
from koinonia.web import resources
from koinonia.web.tenancy import current_church_id, require_operator, require_permission

bp = Blueprint("phone_numbers", __name__, url_prefix="/api/phone-numbers")
admin_bp = Blueprint("admin_phone_numbers", __name__, url_prefix="/api/admin")


class PhoneNumberIn(ApiModel):
    number: str = Field(
        min_length=2,
        max_length=16,
        description="E.164, e.g. +14155550123",
        # Enforced by _e164 below, whose messages say how to write the number.
        json_schema_extra={"pattern": E164_PATTERN},
        examples=["+14155550123"],
    )

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str) -> str:
        return phone_links.e164(value)


class AdminPhoneNumberIn(PhoneNumberIn):
    church_id: uuid.UUID


class PhoneNumberOut(ApiModel):
    id: uuid.UUID
    church_id: uuid.UUID
    number: str = Field(pattern=E164_PATTERN)
    status: LinkStatus = Field(
        description="pending until the provider confirms; failed: see lastError"
    )
    attempts: int
    last_error: str | None
    last_attempt_at: datetime | None
    created_at: datetime


class PhoneNumberListOut(ApiModel):
    data: list[PhoneNumberOut]


class UnroutedOut(ApiModel):
    id: uuid.UUID
    to: str
    from_: str = Field(alias="from")
    body: str
    provider_message_id: str | None
    received_at: datetime


class UnroutedListOut(ApiModel):
    data: list[UnroutedOut]


class ListQuery(ApiModel):
    limit: int = Field(default=100, ge=1, le=500)


@bp.get("")
@tag(["phone numbers"])
@require_permission(Permission.VIEW)
@document_response(PhoneNumberListOut, 200)
async def list_numbers() -> dict[str, Any]:
    numbers = await phone_links.list_numbers(current_church_id())
    return {"data": [phone_links.number_json(n) for n in numbers]}


@bp.post("")
@tag(["phone numbers"])
@require_permission(Permission.MANAGE_NUMBERS)
@validate_request(PhoneNumberIn)
@document_response(PhoneNumberOut, 201)
@document_errors(409)
async def add_number(data: PhoneNumberIn) -> tuple[dict[str, Any], int]:
    """Add a number (E.164) and link it at the SMS provider: its inbound texts come to this
    church, and the church's texts go out from it once ``linked``. Answers ``pending``; a
    worker makes the link (``linked``, or ``failed`` with ``lastError``) and failed links are
    retried every 5 minutes. A number a church already has answers 409 ``number_in_use``."""
    number = await phone_links.add_number(resources.sms_queue(), current_church_id(), data.number)
    return phone_links.number_json(number), 201


@bp.delete("/<uuid:number_id>")
@tag(["phone numbers"])
@require_permission(Permission.MANAGE_NUMBERS)
@document_no_content
async def remove_number(number_id: uuid.UUID) -> Response:
    """Remove the number: texts to it are then recorded for operators, not this church."""
    await phone_links.remove_number(current_church_id(), number_id)
    return Response(status=204)


@admin_bp.get("/phone-numbers")
@tag(["admin"])
@require_operator
@validate_querystring(ListQuery)
@document_response(PhoneNumberListOut, 200)
async def admin_list_numbers(query_args: ListQuery) -> dict[str, Any]:
    """Every church's numbers, oldest first."""
    numbers = await phone_links.list_numbers(None, query_args.limit)
    return {"data": [phone_links.number_json(n) for n in numbers]}


@admin_bp.post("/phone-numbers")
@tag(["admin"])
@require_operator
@validate_request(AdminPhoneNumberIn)
@document_response(PhoneNumberOut, 201)
@document_errors(404, 409)
async def admin_add_number(data: AdminPhoneNumberIn) -> tuple[dict[str, Any], int]:
    """Add a number to a church, as ``POST /api/phone-numbers`` does for its owner (same
    answers); an unknown ``churchId`` answers 404."""
    number = await phone_links.add_number(resources.sms_queue(), data.church_id, data.number)
    return phone_links.number_json(number), 201


@admin_bp.get("/inbound/unrouted")
@tag(["admin"])
@require_operator
@validate_querystring(ListQuery)
@document_response(UnroutedListOut, 200)
async def unrouted_inbound(query_args: ListQuery) -> dict[str, Any]:
    """Texts that reached a number no church has, newest first: acknowledged to the provider
    and kept here, never attached to a church."""
    texts = await phone_links.list_unrouted(query_args.limit)
    return {"data": [phone_links.unrouted_json(t) for t in texts]}
