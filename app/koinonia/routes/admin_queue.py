"""Operations on the job queue and the distributed locks (platform operators only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_request
from redis.exceptions import RedisError

from koinonia.delivery import messaging
from koinonia.delivery import operations as delivery_operations
from koinonia.errors import NotFound, ServiceUnavailable
from koinonia.openapi import document_no_content
from koinonia.schemas import ApiModel
from koinonia.services import queue as queue_service
from koinonia.web import resources
from koinonia.web.state import get_state
from koinonia.web.tenancy import require_operator

bp = Blueprint("admin_queue", __name__, url_prefix="/api/admin")


class QueueMetricsOut(ApiModel):
    name: str
    queued: int
    active: int
    scheduled: int
    failed: int
    workers: int
    totals: dict[str, int] = Field(description="complete, failed, retried, aborted")


class QueueHealthOut(ApiModel):
    status: str = Field(description="healthy, degraded (no worker) or unhealthy (no Redis)")
    redis: str
    workers: int | None = None
    queued: int | None = None
    active: int | None = None
    scheduled: int | None = None
    failed: int | None = None


class FailedJobOut(ApiModel):
    id: str
    function: str
    kwargs: dict[str, Any]
    attempts: int
    error: str | None = Field(description="the last line of the error")
    queued_at: int | None = Field(description="milliseconds since the epoch")
    failed_at: int | None = Field(description="milliseconds since the epoch")


class FailedJobsOut(ApiModel):
    data: list[FailedJobOut]
    count: int


class RetriedOut(ApiModel):
    retried: int
    jobs: list[str]


class UnresolvedDeliveryOut(ApiModel):
    id: uuid.UUID
    message_id: uuid.UUID
    church_id: uuid.UUID
    claimed_at: datetime
    last_error: str | None


class UnresolvedDeliveriesOut(ApiModel):
    data: list[UnresolvedDeliveryOut]
    count: int


class ResentOut(ApiModel):
    resent: list[uuid.UUID]
    count: int


class ClearedOut(ApiModel):
    cleared: int


class LockOut(ApiModel):
    name: str
    holder: str
    ttl_ms: int | None = Field(description="null: the lock has no expiry")


class LocksOut(ApiModel):
    data: list[LockOut]


@bp.get("/queue/metrics")
@tag(["admin"])
@require_operator
@document_response(QueueMetricsOut, 200)
async def queue_metrics() -> dict[str, Any]:
    try:
        return await queue_service.queue_metrics(resources.sms_queue())
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("Queue store unavailable") from exc


@bp.get("/queue/health")
@tag(["admin"])
@require_operator
@document_response(QueueHealthOut, 200)
@document_response(QueueHealthOut, 503)
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
@document_response(FailedJobsOut, 200)
async def failed_jobs() -> dict[str, Any]:
    """The last 50 jobs that failed for good, newest first."""
    jobs = await queue_service.failed_jobs(resources.sms_queue())
    return {"data": [queue_service.describe_job(job) for job in jobs], "count": len(jobs)}


@bp.post("/queue/retry-failed")
@tag(["admin"])
@require_operator
@document_response(RetriedOut, 200)
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
    # Literal[True]: the document says `const: true`, so a client (and the fuzzer) knows a
    # false is refused (422) before anything is resent.
    confirm: Literal[True] = Field(
        description="Must be true: the provider may already have texted these members."
    )


@bp.get("/deliveries/unknown")
@tag(["admin"])
@require_operator
@document_response(UnresolvedDeliveriesOut, 200)
async def unresolved_deliveries() -> dict[str, Any]:
    """Deliveries whose provider call may or may not have texted the member, still without
    evidence (status callback, provider lookup) after ``sms_unknown_resolve_seconds``."""
    rows = await delivery_operations.unresolved(get_state().settings)
    return {"data": rows, "count": len(rows)}


@bp.post("/deliveries/unknown/resend")
@tag(["admin"])
@require_operator
@validate_request(ResendIn)
@document_response(ResentOut, 200)
async def resend_unresolved(data: ResendIn) -> dict[str, Any]:
    """Send these unresolved deliveries again, knowing a member may get the text twice.
    Only deliveries still ``unknown`` are resent; ``confirm`` must be true."""
    resent = await delivery_operations.resend(resources.sender(), data.delivery_ids)
    return {"resent": [str(i) for i in resent], "count": len(resent)}


@bp.post("/queue/clear-failed")
@tag(["admin"])
@require_operator
@document_response(ClearedOut, 200)
async def clear_failed() -> dict[str, Any]:
    return {"cleared": await queue_service.clear_failed(resources.sms_queue())}


@bp.get("/locks")
@tag(["admin"])
@require_operator
@document_response(LocksOut, 200)
async def list_locks() -> dict[str, Any]:
    return {"data": await resources.locks().list_active()}


@bp.delete("/locks/<path:name>")
@tag(["admin"])
@require_operator
@document_no_content
async def force_release_lock(name: str) -> Response:
    if not await resources.locks().force_release(name):
        raise NotFound("No such lock")
    return Response(status=204)
