"""Health probes with the exact shapes of the deployment checklist (2.4).

``/health`` does no I/O. The others check dependencies with a short timeout each
(``KOINONIA_HEALTH_CHECK_TIMEOUT``) so a dead dependency cannot hang a probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from quart import Blueprint, Response
from quart_schema import document_response, tag

from koinonia import db
from koinonia.responses import json_bytes, json_response
from koinonia.schemas import ApiModel
from koinonia.stores.client import ping_redis
from koinonia.web.state import get_state

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


class HealthOut(ApiModel):
    status: str
    timestamp: str


class HealthChecks(ApiModel):
    database: str
    redis: str
    application: str


class DetailedHealthOut(ApiModel):
    status: str
    checks: HealthChecks
    # The deployed release (KOINONIA_RELEASE), so "every server runs the same code" is one
    # request per server.
    release: str
    timestamp: str


class ReadyOut(ApiModel):
    ready: bool
    timestamp: str


class LiveOut(ApiModel):
    alive: bool
    uptime: float
    timestamp: str


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def _check_database(timeout_seconds: float) -> bool:
    try:
        await db.ping_db(timeout_seconds)
        return True
    except Exception as exc:
        log.warning("health: database check failed", extra={"error": type(exc).__name__})
        return False


async def _check_redis(timeout_seconds: float) -> bool:
    state = get_state()
    try:
        await ping_redis(state.require_redis(), timeout_seconds)
        return True
    except Exception as exc:
        log.warning("health: redis check failed", extra={"error": type(exc).__name__})
        return False


async def _dependencies() -> tuple[bool, bool]:
    timeout = get_state().settings.health_check_timeout
    database_ok, redis_ok = await asyncio.gather(_check_database(timeout), _check_redis(timeout))
    return database_ok, redis_ok


@bp.get("/health")
@tag(["health"])
@document_response(HealthOut, 200)
async def health() -> Response:
    """Liveness of the HTTP layer only; no I/O."""
    # Usually answered before Quart by web/fast_path.py, with this same body.
    return json_response(health_body())


def health_body() -> bytes:
    """The body of ``/health``, encoded (no conversion of a returned dict)."""
    return json_bytes({"status": "ok", "timestamp": _now()})


@bp.get("/health/detailed")
@tag(["health"])
@document_response(DetailedHealthOut, 200)
@document_response(DetailedHealthOut, 503)
async def health_detailed() -> tuple[dict, int]:
    database_ok, redis_ok = await _dependencies()
    application_ok = not get_state().shutting_down
    checks = {
        "database": "ok" if database_ok else "failed",
        "redis": "ok" if redis_ok else "failed",
        "application": "ok" if application_ok else "failed",
    }
    healthy = database_ok and redis_ok and application_ok
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "checks": checks,
        "release": get_state().settings.release,
        "timestamp": _now(),
    }
    return body, 200 if healthy else 503


@bp.get("/health/ready")
@tag(["health"])
@document_response(ReadyOut, 200)
@document_response(ReadyOut, 503)
async def health_ready() -> tuple[dict, int]:
    """503 while shutting down (so the load balancer drains us) or a dependency is down."""
    if get_state().shutting_down:
        return {"ready": False, "timestamp": _now()}, 503
    database_ok, redis_ok = await _dependencies()
    ready = database_ok and redis_ok
    return {"ready": ready, "timestamp": _now()}, 200 if ready else 503


@bp.get("/health/live")
@tag(["health"])
@document_response(LiveOut, 200)
async def health_live() -> dict:
    uptime = time.monotonic() - get_state().started_at
    return {"alive": True, "uptime": round(uptime, 3), "timestamp": _now()}
