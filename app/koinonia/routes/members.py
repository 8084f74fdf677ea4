"""Members of the caller's church."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import EmailStr, Field, StrictBool
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_querystring, validate_request

from koinonia.models.core import ConsentSource
from koinonia.openapi import document_cache_status, document_errors, document_no_content
from koinonia.responses import json_response
from koinonia.schemas import E164_PATTERN, ApiModel
from koinonia.services import consent, members
from koinonia.services.permissions import Permission
from koinonia.web.state import get_state
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("members", __name__, url_prefix="/api/members")


class ConsentEventOut(ApiModel):
    id: uuid.UUID
    opted_in: bool
    source: ConsentSource
    changed_by: uuid.UUID | None = Field(description="the user, for source staff or import")
    keyword: str | None = Field(description="the texted keyword, for source keyword")
    reference: str | None = Field(description="the text's provider id, or the import's id")
    created_at: datetime


class ConsentHistoryOut(ApiModel):
    data: list[ConsentEventOut]


class MemberOut(ApiModel):
    id: uuid.UUID
    church_id: uuid.UUID
    first_name: str
    last_name: str
    phone: str = Field(pattern=E164_PATTERN, description="E.164")
    email: str | None
    opt_in_sms: bool
    created_at: datetime
    updated_at: datetime


class MemberPagination(ApiModel):
    limit: int
    page: int | None = Field(description="null when paging by cursor")
    total: int | None = Field(description="null when paging by cursor")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class MemberPage(ApiModel):
    data: list[MemberOut]
    pagination: MemberPagination


class MemberListQuery(ApiModel):
    limit: int = Field(default=members.DEFAULT_PAGE_SIZE, ge=1, le=members.MAX_PAGE_SIZE)
    page: int | None = Field(default=None, ge=1, le=10_000_000)
    cursor: str | None = Field(default=None, max_length=200)


class MemberIn(ApiModel):
    first_name: str = Field(min_length=1, max_length=100)
    last_name: str = Field(default="", max_length=100)
    phone: str = Field(
        min_length=3,
        max_length=32,
        description="E.164 (`+14155550123`) or national in the default region; kept as E.164",
        examples=["+14155550123"],
    )
    email: EmailStr | None = None
    opt_in_sms: StrictBool = True


class MemberPatch(ApiModel):
    first_name: str | None = Field(default=None, min_length=1, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, min_length=3, max_length=32)
    email: EmailStr | None = None
    opt_in_sms: StrictBool | None = None


@bp.get("")
@tag(["members"])
@require_permission(Permission.VIEW)
@validate_querystring(MemberListQuery)
@document_response(MemberPage, 200)
@document_cache_status
async def list_members(query_args: MemberListQuery) -> Response:
    """Newest first. ``page``/``limit`` or ``cursor`` (from ``pagination.nextCursor``)."""
    # Encoded once: a cache hit goes out exactly as Redis returned it.
    body, cache_status = await members.list_members_json(
        get_state().cache,
        current_church_id(),
        limit=query_args.limit,
        page=query_args.page,
        cursor=query_args.cursor,
    )
    response = json_response(body)
    response.headers["X-Cache"] = cache_status.upper()
    return response


@bp.post("")
@tag(["members"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(MemberIn)
@document_response(MemberOut, 201)
@document_errors(409)
async def create_member(data: MemberIn) -> tuple[dict, int]:
    state = get_state()
    member = await members.create_member(
        state.cache,
        current_church_id(),
        data.model_dump(),
        state.settings.default_phone_region,
        user_id=current_user().user_id,
    )
    return members.member_json(member), 201


@bp.get("/<uuid:member_id>")
@tag(["members"])
@require_permission(Permission.VIEW)
@document_response(MemberOut, 200)
async def get_member(member_id: uuid.UUID) -> dict:
    return members.member_json(await members.get_member(current_church_id(), member_id))


@bp.patch("/<uuid:member_id>")
@tag(["members"])
@require_permission(Permission.MANAGE_MEMBERS)
@validate_request(MemberPatch)
@document_response(MemberOut, 200)
@document_errors(409)
async def update_member(member_id: uuid.UUID, data: MemberPatch) -> dict:
    state = get_state()
    changes = data.model_dump(exclude_unset=True)
    # Only email may be cleared with null; other fields ignore an explicit null.
    changes = {k: v for k, v in changes.items() if v is not None or k == "email"}
    member = await members.update_member(
        state.cache,
        current_church_id(),
        member_id,
        changes,
        state.settings.default_phone_region,
        user_id=current_user().user_id,
    )
    return members.member_json(member)


@bp.delete("/<uuid:member_id>")
@tag(["members"])
@require_permission(Permission.MANAGE_MEMBERS)
@document_no_content
async def delete_member(member_id: uuid.UUID) -> Response:
    await members.delete_member(get_state().cache, current_church_id(), member_id)
    return Response(status=204)


@bp.get("/<uuid:member_id>/consent")
@tag(["members"])
@require_permission(Permission.VIEW)
@document_response(ConsentHistoryOut, 200)
async def consent_history(member_id: uuid.UUID) -> dict:
    """The member's SMS consent changes, oldest first: who or what changed it, when, how.

    ``source`` is ``staff`` (a user created or edited the member: ``changedBy``),
    ``keyword`` (the member texted ``keyword``; ``reference`` is the text's provider id) or
    ``import`` (a member import; ``reference`` is the import's id).
    """
    return {"data": await consent.history(current_church_id(), member_id)}
