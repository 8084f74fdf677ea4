"""Summary figures of the caller's church."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_querystring

from koinonia.openapi import document_cache_status
from koinonia.responses import json_response
from koinonia.schemas import ApiModel
from koinonia.services import analytics
from koinonia.services.permissions import Permission
from koinonia.web.state import get_state
from koinonia.web.tenancy import current_church_id, require_permission

bp = Blueprint("analytics", __name__, url_prefix="/api/analytics")


class SummaryQuery(ApiModel):
    days: int = Field(default=30, ge=1, le=366)


class WindowOut(ApiModel):
    days: int
    since: datetime


class MemberCountsOut(ApiModel):
    total: int
    opted_in: int


class StatusCountsOut(ApiModel):
    total: int
    by_status: dict[str, int] = Field(description="statuses with at least one, in the window")


class SummaryOut(ApiModel):
    window: WindowOut
    members: MemberCountsOut
    messages: StatusCountsOut
    deliveries: StatusCountsOut
    generated_at: datetime


@bp.get("/summary")
@tag(["analytics"])
@require_permission(Permission.SEE_ANALYTICS)
@validate_querystring(SummaryQuery)
@document_response(SummaryOut, 200)
@document_cache_status
async def summary(query_args: SummaryQuery) -> Response:
    body, cache_status = await analytics.summary_json(
        get_state().cache, current_church_id(), query_args.days
    )
    response = json_response(body)
    response.headers["X-Cache"] = cache_status.upper()
    return response
