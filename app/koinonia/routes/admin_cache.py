"""Cache operations endpoints, for platform operators only."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import tag
from redis.exceptions import RedisError

from koinonia.errors import ServiceUnavailable
from koinonia.stores.cache import CacheService
from koinonia.web.state import get_state
from koinonia.web.tenancy import require_operator

bp = Blueprint("admin_cache", __name__, url_prefix="/api/admin/cache")


def _cache() -> CacheService:
    cache = get_state().cache
    if cache is None:
        raise ServiceUnavailable("Cache not started")
    return cache


@bp.get("/metrics")
@tag(["admin"])
@require_operator
async def cache_metrics() -> dict:
    """Hit/miss counts and hit rate per key family, across all app servers."""
    try:
        return await _cache().stats()
    except RedisError as exc:
        raise ServiceUnavailable("Cache unavailable") from exc


@bp.get("/health")
@tag(["admin"])
@require_operator
async def cache_health() -> tuple[dict, int]:
    result = await _cache().health()
    return result, 200 if result["status"] == "healthy" else 503


@bp.post("/reset")
@tag(["admin"])
@require_operator
async def cache_reset() -> dict:
    """Reset the hit/miss counters (cached entries are kept)."""
    try:
        await _cache().reset_stats()
    except RedisError as exc:
        raise ServiceUnavailable("Cache unavailable") from exc
    return {"reset": True}
