"""Cache operations endpoints, for platform operators only."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint
from quart_schema import document_response, tag
from redis.exceptions import RedisError

from koinonia.errors import ServiceUnavailable
from koinonia.schemas import ApiModel
from koinonia.stores.cache import CacheService
from koinonia.web.state import get_state
from koinonia.web.tenancy import require_operator

bp = Blueprint("admin_cache", __name__, url_prefix="/api/admin/cache")


class HitCountsOut(ApiModel):
    hits: int
    misses: int
    hit_rate: float


class FamilyStatsOut(HitCountsOut):
    ttl_seconds: int


class CacheMetricsOut(ApiModel):
    families: dict[str, FamilyStatsOut] = Field(description="by key family")
    totals: HitCountsOut


class CacheHealthOut(ApiModel):
    status: str = Field(description="healthy or unhealthy")
    latency_ms: float | None = None
    used_memory: str | None = None
    error: str | None = Field(default=None, description="why unhealthy")


class CacheResetOut(ApiModel):
    reset: bool


def _cache() -> CacheService:
    cache = get_state().cache
    if cache is None:
        raise ServiceUnavailable("Cache not started")
    return cache


@bp.get("/metrics")
@tag(["admin"])
@require_operator
@document_response(CacheMetricsOut, 200)
async def cache_metrics() -> dict:
    """Hit/miss counts and hit rate per key family, across all app servers."""
    try:
        return await _cache().stats()
    except RedisError as exc:
        raise ServiceUnavailable("Cache unavailable") from exc


@bp.get("/health")
@tag(["admin"])
@require_operator
@document_response(CacheHealthOut, 200)
@document_response(CacheHealthOut, 503)
async def cache_health() -> tuple[dict, int]:
    result = await _cache().health()
    return result, 200 if result["status"] == "healthy" else 503


@bp.post("/reset")
@tag(["admin"])
@require_operator
@document_response(CacheResetOut, 200)
async def cache_reset() -> dict:
    """Reset the hit/miss counters (cached entries are kept)."""
    try:
        await _cache().reset_stats()
    except RedisError as exc:
        raise ServiceUnavailable("Cache unavailable") from exc
    return {"reset": True}
