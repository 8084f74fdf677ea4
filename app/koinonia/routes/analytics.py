"""Summary figures of the caller's church."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import tag, validate_querystring

from koinonia.responses import json_response
from koinonia.schemas import ApiModel
from koinonia.services import analytics
from koinonia.services.permissions import Permission
from koinonia.web.state import get_state
from koinonia.web.tenancy import current_church_id, require_permission

bp = Blueprint("analytics", __name__, url_prefix="/api/analytics")


class SummaryQuery(ApiModel):
    days: int = Field(default=30, ge=1, le=366)


@bp.get("/summary")
@tag(["analytics"])
@require_permission(Permission.SEE_ANALYTICS)
@validate_querystring(SummaryQuery)
async def summary(query_args: SummaryQuery) -> Response:
    body, cache_status = await analytics.summary_json(
        get_state().cache, current_church_id(), query_args.days
    )
    response = json_response(body)
    response.headers["X-Cache"] = cache_status.upper()
    return response
