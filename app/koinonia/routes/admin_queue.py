"""Operations on the job queue and the distributed locks (platform operators only)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import tag, validate_request
from redis.exceptions import RedisError

from koinonia.delivery import messaging
from koinonia.delivery import operations as delivery_operations
from koinonia.errors import BadRequest, NotFound, ServiceUnavailable
from koinonia.schemas import ApiModel
from koinonia.services import queue as queue_service
from koinonia.web import resources
from koinonia.web.state import get_state
from koinonia.web.tenancy import require_operator

bp = Blueprint("admin_queue", __name__, url_prefix="/api/admin")


@bp.get("/queue/metrics")
@tag(["admin"])
@require_operator
async def queue_metrics() -> dict[str, Any]:
    try:
        return await queue_service.queue_metrics(resources.sms_queue())
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("Queue store unavailable") from exc


@bp.get("/queue/health")
@tag(["admin"])
@require_operator
async def queue_health() -> tuple[dict[str, Any], int]:
    """healthy: workers are consuming; degraded: no worker (jobs wait); unhealthy: no Redis."""
    try:
        metrics = await queue_service.queue_metrics(resources.sms_queue())
    except (RedisError, OSError):
        return {"status": "unhealthy", "redis": "failed"}, 503
    status = "healthy" if metrics["workers"] else "degraded"
    return {
        "status": status,
        "redis": "ok",
        "workers": metrics["workers"],
        "queued": metrics["queued"],
        "active": metrics["active"],
        "scheduled": metrics["scheduled"],
        "failed": metrics["failed"],
    }, 200


@bp.get("/queue/failed")
@tag(["admin"])
@require_operator
async def failed_jobs() -> dict[str, Any]:
    """The last 50 jobs that failed for good, newest first."""
    jobs = await queue_service.failed_jobs(resources.sms_queue())
    return {"data": [queue_service.describe_job(job) for job in jobs], "count": len(jobs)}


@bp.post("/queue/retry-failed")
@tag(["admin"])
@require_operator
async def retry_failed() -> dict[str, Any]:
    sms_queue = resources.sms_queue()
    # Deliveries wait again BEFORE their jobs are back in the queue, so a fast worker cannot
    # finish a job and then see its delivery reset behind it.
    waiting = await queue_service.failed_jobs(sms_queue, limit=100_000)
    await messaging.requeue_failed_deliveries(
        [
            uuid.UUID(delivery_id)
            for job in waiting
            if job.function == queue_service.SEND_DELIVERIES and job.kwargs
            for delivery_id in job.kwargs.get("delivery_ids", [])
        ]
    )
    jobs = await queue_service.retry_failed(sms_queue, get_state().settings)
    return {"retried": len(jobs), "jobs": [job.key for job in jobs]}


class ResendIn(ApiModel):
    delivery_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)
    confirm: bool = Field(
        description="Must be true: the provider may already have texted these members."
    )


@bp.get("/deliveries/unknown")
@tag(["admin"])
@require_operator
async def unresolved_deliveries() -> dict[str, Any]:
    """Deliveries whose provider call may or may not have texted the member, still without
    evidence (status callback, provider lookup) after ``sms_unknown_resolve_seconds``."""
    rows = await delivery_operations.unresolved(get_state().settings)
    return {"data": rows, "count": len(rows)}


@bp.post("/deliveries/unknown/resend")
@tag(["admin"])
@require_operator
@validate_request(ResendIn)
async def resend_unresolved(data: ResendIn) -> dict[str, Any]:
    """Send these unresolved deliveries again, knowing a member may get the text twice.
    Only deliveries still ``unknown`` are resent; ``confirm`` must be true."""
    if not data.confirm:
        raise BadRequest("confirm must be true: the provider may already have texted these members")
    resent = await delivery_operations.resend(resources.sender(), data.delivery_ids)
    return {"resent": [str(i) for i in resent], "count": len(resent)}


@bp.post("/queue/clear-failed")
@tag(["admin"])
@require_operator
async def clear_failed() -> dict[str, Any]:
    return {"cleared": await queue_service.clear_failed(resources.sms_queue())}


@bp.get("/locks")
@tag(["admin"])
@require_operator
async def list_locks() -> dict[str, Any]:
    return {"data": await resources.locks().list_active()}


@bp.delete("/locks/<path:name>")
@tag(["admin"])
@require_operator
async def force_release_lock(name: str) -> Response:
    if not await resources.locks().force_release(name):
        raise NotFound("No such lock")
    return Response(status=204)
