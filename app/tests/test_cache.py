"""Cache-aside: hits, misses, versioned invalidation on member change and STOP/START, a
load racing a write, Redis-down degradation, and the operators' cache endpoints."""

from __future__ import annotations

import asyncio
import json
import uuid

from koinonia.services import analytics, members
from koinonia.stores.cache import ANALYTICS, MEMBERS, cache_key, version_key, versioned_key
from koinonia.web.state import get_state
from tests.conftest import app_using_redis
from tests.messaging_fixtures import church_number, post_webhook


async def _add_member(client, owner, n: int) -> dict:
    response = await client.post(
        "/api/members",
        headers=owner.headers,
        json={"firstName": f"C{n}", "phone": f"+1 415 555 {n:04d}"},
    )
    assert response.status_code == 201
    return await response.get_json()


async def _stats(app, redis) -> dict:
    # Counted in the process and added to Redis in batches: flush this process's first.
    await get_state(app).cache.flush_counters()
    return await redis.hgetall("cache-stats")


async def _current_key(redis, family: str, church_id: str, *parts: object) -> str:
    version = await redis.get(version_key(family, church_id)) or 0
    return versioned_key(cache_key(family, church_id, *parts), version)


async def test_member_first_page_miss_then_hit(app, client, church_a, redis):
    await _add_member(client, church_a, 1)
    before = await _stats(app, redis)

    first = await client.get("/api/members", headers=church_a.headers)
    second = await client.get("/api/members", headers=church_a.headers)
    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT"
    assert await first.get_json() == await second.get_json()

    ttl = await redis.ttl(await _current_key(redis, MEMBERS, church_a.church_id, "first", 50))
    assert 1700 < ttl <= 1800  # 30 minutes
    after = await _stats(app, redis)
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
    b_key = await _current_key(redis, MEMBERS, church_b.church_id, "first", 50)
    assert await redis.exists(await _current_key(redis, MEMBERS, church_a.church_id, "first", 50))
    assert await redis.exists(await _current_key(redis, ANALYTICS, church_a.church_id, 30))

    created = await _add_member(client, church_a, 4)
    # A's pages now live under a new version, with nothing there yet; B's are untouched.
    assert not await redis.exists(
        await _current_key(redis, MEMBERS, church_a.church_id, "first", 50)
    )
    assert not await redis.exists(await _current_key(redis, ANALYTICS, church_a.church_id, 30))
    assert await _current_key(redis, MEMBERS, church_b.church_id, "first", 50) == b_key
    assert await redis.exists(b_key)
    summary = await client.get("/api/analytics/summary", headers=church_a.headers)
    assert summary.headers["X-Cache"] == "MISS"

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
            body, status = await members.list_members_json(state.cache, _uuid(church_a))
            assert status == "error"
            assert [m["firstName"] for m in json.loads(body)["data"]] == ["C5"]
            summary, status = await analytics.summary_json(state.cache, _uuid(church_a), 30)
            assert status == "error"
            assert json.loads(summary)["members"]["total"] == 1
            # Invalidation is skipped with a warning, not fatal.
            await state.cache.invalidate_church(_uuid(church_a))
        # Redis back: caching resumes.
        _, status = await members.list_members_json(state.cache, _uuid(church_a))
        assert status == "miss"
        _, status = await members.list_members_json(state.cache, _uuid(church_a))
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


async def test_a_page_loaded_while_a_member_was_added_is_never_served_after_it(
    app, client, church_a, monkeypatch
):
    await _add_member(client, church_a, 6)
    loaded, release = asyncio.Event(), asyncio.Event()
    real_query = members._page_query

    async def query_then_pause(*args, **kwargs):
        page = await real_query(*args, **kwargs)
        if not loaded.is_set():  # the first load only
            loaded.set()
            await release.wait()
        return page

    monkeypatch.setattr(members, "_page_query", query_then_pause)
    # A miss has read the page from the database and pauses before storing it...
    stale = asyncio.create_task(client.get("/api/members", headers=church_a.headers))
    await asyncio.wait_for(loaded.wait(), 5)
    # ...while a member is added (and the cache invalidated).
    created = await _add_member(client, church_a, 7)
    release.set()
    assert created["id"] not in [m["id"] for m in (await (await stale).get_json())["data"]]

    fresh = await client.get("/api/members", headers=church_a.headers)
    assert fresh.headers["X-Cache"] == "MISS"
    assert created["id"] in [m["id"] for m in (await fresh.get_json())["data"]]
    again = await client.get("/api/members", headers=church_a.headers)
    assert again.headers["X-Cache"] == "HIT"
    assert created["id"] in [m["id"] for m in (await again.get_json())["data"]]


async def test_stop_text_then_the_member_list_and_analytics_show_the_opt_out(
    client, church_a, webhook_settings
):
    member = await _add_member(client, church_a, 8)
    line = await church_number(church_a.church_id)
    listing = await client.get("/api/members", headers=church_a.headers)
    summary = await client.get("/api/analytics/summary", headers=church_a.headers)
    opted_in = (await summary.get_json())["members"]["optedIn"]
    assert (await client.get("/api/members", headers=church_a.headers)).headers["X-Cache"] == "HIT"
    assert [
        m["optInSms"] for m in (await listing.get_json())["data"] if m["id"] == member["id"]
    ] == [True]

    stop = {
        "From": member["phone"],
        "To": line,
        "Body": "STOP",
        "MessageSid": f"SM{uuid.uuid4().hex}",
    }
    assert (await post_webhook(client, "/api/webhooks/sms/inbound", stop)).status_code == 200

    listing = await client.get("/api/members", headers=church_a.headers)
    assert [
        m["optInSms"] for m in (await listing.get_json())["data"] if m["id"] == member["id"]
    ] == [False]
    summary = await client.get("/api/analytics/summary", headers=church_a.headers)
    assert (await summary.get_json())["members"]["optedIn"] == opted_in - 1
