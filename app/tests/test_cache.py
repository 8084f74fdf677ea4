"""Cache-aside: hits, misses, invalidation on member change, Redis-down degradation,
and the operators' cache endpoints."""

from __future__ import annotations

import uuid

from koinonia.services import analytics, members
from koinonia.state import get_state
from tests.conftest import app_using_redis


async def _add_member(client, owner, n: int) -> dict:
    response = await client.post(
        "/api/members",
        headers=owner.headers,
        json={"firstName": f"C{n}", "phone": f"+1 415 555 {n:04d}"},
    )
    assert response.status_code == 201
    return await response.get_json()


async def _stats(redis) -> dict:
    return await redis.hgetall("cache-stats")


async def test_member_first_page_miss_then_hit(client, church_a, redis):
    await _add_member(client, church_a, 1)
    before = await _stats(redis)

    first = await client.get("/api/members", headers=church_a.headers)
    second = await client.get("/api/members", headers=church_a.headers)
    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT"
    assert await first.get_json() == await second.get_json()

    key = f"cache:members:{church_a.church_id}:first:50"
    ttl = await redis.ttl(key)
    assert 1700 < ttl <= 1800  # 30 minutes
    after = await _stats(redis)
    assert int(after["members:hit"]) == int(before.get("members:hit", 0)) + 1
    assert int(after["members:miss"]) == int(before.get("members:miss", 0)) + 1


async def test_later_pages_are_not_cached(client, church_a):
    await _add_member(client, church_a, 2)
    for _ in range(2):
        response = await client.get("/api/members?page=2", headers=church_a.headers)
        assert response.headers["X-Cache"] == "BYPASS"


async def test_member_change_invalidates_church_keys_only(client, church_a, church_b, redis):
    await _add_member(client, church_a, 3)
    await _add_member(client, church_b, 3)
    await client.get("/api/members", headers=church_a.headers)
    await client.get("/api/members", headers=church_b.headers)
    await client.get("/api/analytics/summary", headers=church_a.headers)
    assert await redis.exists(f"cache:members:{church_a.church_id}:first:50")
    assert await redis.exists(f"cache:analytics:{church_a.church_id}:30")

    created = await _add_member(client, church_a, 4)
    assert not await redis.exists(f"cache:members:{church_a.church_id}:first:50")
    assert not await redis.exists(f"cache:analytics:{church_a.church_id}:30")
    assert await redis.exists(f"cache:members:{church_b.church_id}:first:50")

    listing = await client.get("/api/members", headers=church_a.headers)
    assert listing.headers["X-Cache"] == "MISS"
    assert created["id"] in [m["id"] for m in (await listing.get_json())["data"]]

    # Update and delete invalidate too.
    await client.get("/api/members", headers=church_a.headers)
    await client.patch(
        f"/api/members/{created['id']}", headers=church_a.headers, json={"firstName": "Z"}
    )
    listing = await client.get("/api/members", headers=church_a.headers)
    assert listing.headers["X-Cache"] == "MISS"
    assert "Z" in [m["firstName"] for m in (await listing.get_json())["data"]]
    await client.delete(f"/api/members/{created['id']}", headers=church_a.headers)
    listing = await client.get("/api/members", headers=church_a.headers)
    assert created["id"] not in [m["id"] for m in (await listing.get_json())["data"]]


async def test_redis_down_degrades_to_database(app, church_a, spare_redis):
    client = app.test_client()
    await _add_member(client, church_a, 5)
    async with app_using_redis(app, spare_redis.url):
        state = get_state(app)
        with spare_redis.down():
            # Authenticated routes need the session store: 503, not 500.
            response = await client.get("/api/members", headers=church_a.headers)
            assert response.status_code == 503
            assert (await response.get_json())["error"]["code"] == "service_unavailable"
            # The cache-aside paths the routes use answer from the database.
            body, status = await members.list_members(state.cache, _uuid(church_a))
            assert status == "error"
            assert [m["firstName"] for m in body["data"]] == ["C5"]
            summary, status = await analytics.summary(state.cache, _uuid(church_a), 30)
            assert status == "error"
            assert summary["members"]["total"] == 1
            # Invalidation is skipped with a warning, not fatal.
            await state.cache.invalidate_church(_uuid(church_a))
        # Redis back: caching resumes.
        _, status = await members.list_members(state.cache, _uuid(church_a))
        assert status == "miss"
        _, status = await members.list_members(state.cache, _uuid(church_a))
        assert status == "hit"


def _uuid(owner) -> uuid.UUID:
    return uuid.UUID(owner.church_id)


async def test_admin_cache_endpoints_for_operators(client, operator, church_a, redis):
    await client.get("/api/members", headers=church_a.headers)
    await client.get("/api/members", headers=church_a.headers)

    metrics = await client.get("/api/admin/cache/metrics", headers=operator.headers)
    assert metrics.status_code == 200
    body = await metrics.get_json()
    assert set(body["families"]) == {"members", "analytics"}
    assert body["families"]["members"]["hits"] >= 1
    assert 0 <= body["totals"]["hitRate"] <= 1

    health = await client.get("/api/admin/cache/health", headers=operator.headers)
    assert health.status_code == 200
    assert (await health.get_json())["status"] == "healthy"

    reset = await client.post("/api/admin/cache/reset", headers=operator.headers)
    assert reset.status_code == 200
    body = await (await client.get("/api/admin/cache/metrics", headers=operator.headers)).get_json()
    assert body["totals"] == {"hits": 0, "misses": 0, "hitRate": 0.0}


async def test_admin_cache_endpoints_refuse_church_users(client, church_a):
    for method, path in (
        ("GET", "/api/admin/cache/metrics"),
        ("GET", "/api/admin/cache/health"),
        ("POST", "/api/admin/cache/reset"),
    ):
        response = await client.open(path, method=method, headers=church_a.headers)
        assert response.status_code == 403, path
        anonymous = await client.open(path, method=method)
        assert anonymous.status_code == 401, path
