"""Cache-aside: hits, misses, versioned invalidation on member change and STOP/START, a
load racing a write, Redis-down degradation, the operators' cache endpoints, and each
process's own copy of the hottest pages (no round trip when warm, never stale past a bump
it heard of, bypassed while it cannot hear them)."""

from __future__ import annotations

import asyncio
import json
import uuid

from redis.asyncio import Redis

from koinonia.services import analytics, members
from koinonia.stores.cache import (
    ANALYTICS,
    MEMBERS,
    bump_versions,
    cache_key,
    version_key,
    versioned_key,
)
from koinonia.web.state import get_state
from tests.conftest import app_using_redis, register_church
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


# --- this process's copy of the hottest pages -----------------------------------------------


async def _until(listener, condition) -> None:
    """Wait (at most a second) for the invalidation subscriber to make ``condition`` true;
    woken by each change it makes, no polling sleep."""

    async def wait() -> None:
        while not condition():
            await listener.changed.wait()

    await asyncio.wait_for(wait(), 1.0)


async def _subscribed(app):
    state = get_state(app)
    await _until(state.revocations, lambda: state.revocations.up)
    return state


def _count_redis_calls(monkeypatch, state) -> list[str]:
    """Every command the app's Redis client sends from now on (scripts included)."""
    sent: list[str] = []
    real = state.redis.execute_command

    async def counted(*args, **kwargs):
        sent.append(str(args[0]))
        return await real(*args, **kwargs)

    monkeypatch.setattr(state.redis, "execute_command", counted)
    return sent


async def _written_elsewhere(redis, owner, n: int) -> str:
    """Another app server adds a member: its own database write and its own Redis client
    (so this process hears of it only through the channel)."""
    church_id = _uuid(owner)
    created = await members.create_member(
        None, church_id, {"first_name": f"E{n}", "phone": f"+1 415 555 {n:04d}"}, "US", user_id=None
    )
    await bump_versions(redis, church_id)
    return str(created.id)


def _ids(body: dict) -> list[str]:
    return [m["id"] for m in body["data"]]


async def test_a_warm_process_answers_a_cached_page_with_no_redis_round_trip(
    app, client, church_a, monkeypatch
):
    state = await _subscribed(app)
    await _add_member(client, church_a, 20)
    first = await client.get("/api/members", headers=church_a.headers)
    sent = _count_redis_calls(monkeypatch, state)

    warm = await client.get("/api/members", headers=church_a.headers)
    assert warm.headers["X-Cache"] == "HIT"
    assert await warm.get_json() == await first.get_json()
    assert sent == []  # neither the session (session cache) nor the page (local copy)


async def test_a_write_in_another_process_makes_the_next_read_fresh(app, client, church_a, redis):
    state = await _subscribed(app)
    await _add_member(client, church_a, 21)
    await client.get("/api/members", headers=church_a.headers)
    key = cache_key(MEMBERS, church_a.church_id, "first", 50)
    assert state.cache.local.get(key) is not None

    created = await _written_elsewhere(redis, church_a, 22)
    # The bump's announcement evicts this process's copy: no stale page even within the bound.
    await _until(state.revocations, lambda: state.cache.local.get(key) is None)
    fresh = await client.get("/api/members", headers=church_a.headers)
    assert fresh.headers["X-Cache"] == "MISS"
    assert created in _ids(await fresh.get_json())


async def test_a_page_read_from_redis_just_before_a_bump_is_not_kept_in_the_process(
    app, client, church_a, redis, monkeypatch
):
    state = await _subscribed(app)
    await _add_member(client, church_a, 23)
    await client.get("/api/members", headers=church_a.headers)  # in Redis under the version
    key = cache_key(MEMBERS, church_a.church_id, "first", 50)
    state.cache.local.clear()
    read, release = asyncio.Event(), asyncio.Event()
    real_lookup = state.cache._lookup

    async def lookup_then_pause(*args, **kwargs):
        found = await real_lookup(*args, **kwargs)
        if not read.is_set():  # the first lookup only
            read.set()
            await release.wait()
        return found

    monkeypatch.setattr(state.cache, "_lookup", lookup_then_pause)
    # A lookup has read the page and its version from Redis, and pauses before keeping it...
    stale = asyncio.create_task(client.get("/api/members", headers=church_a.headers))
    await asyncio.wait_for(read.wait(), 5)
    # ...while another server adds a member, and this process hears the bump.
    version = int(await redis.get(version_key(MEMBERS, church_a.church_id)))
    created = await _written_elsewhere(redis, church_a, 24)
    announced = (MEMBERS, church_a.church_id)
    await _until(
        state.revocations, lambda: state.cache.local._announced.get(announced, 0) > version
    )
    release.set()
    assert (await stale).headers["X-Cache"] == "HIT"  # valid when that request began
    assert state.cache.local.get(key) is None  # but not kept

    fresh = await client.get("/api/members", headers=church_a.headers)
    assert created in _ids(await fresh.get_json())


async def test_a_missed_bump_is_served_at_most_the_local_bound(
    app, client, church_a, redis, monkeypatch
):
    state = await _subscribed(app)
    now = [1_000.0]
    monkeypatch.setattr(state.cache.local, "clock", lambda: now[0])
    await _add_member(client, church_a, 25)
    await client.get("/api/members", headers=church_a.headers)
    # A write whose announcement never came (the version bumped behind the channel's back).
    church_id = _uuid(church_a)
    created = await members.create_member(
        None, church_id, {"first_name": "M", "phone": "+1 415 555 0026"}, "US", user_id=None
    )
    await redis.incr(version_key(MEMBERS, church_a.church_id))

    now[0] += state.settings.cache_local_seconds - 0.001
    within = await client.get("/api/members", headers=church_a.headers)
    assert str(created.id) not in _ids(await within.get_json())
    now[0] += 0.002
    past = await client.get("/api/members", headers=church_a.headers)
    assert past.headers["X-Cache"] == "MISS"
    assert str(created.id) in _ids(await past.get_json())


async def test_without_the_subscription_local_pages_are_cleared_and_bypassed(
    app, church_a, spare_redis, monkeypatch
):
    async with app_using_redis(app, spare_redis.url):
        client = app.test_client()
        owner = await register_church(app.test_client())
        state = await _subscribed(app)
        listener = state.revocations
        key = cache_key(MEMBERS, owner.church_id, "first", 50)
        await _add_member(client, owner, 27)
        await client.get("/api/members", headers=owner.headers)
        assert state.cache.local.get(key) is not None

        resubscribe = asyncio.Event()
        monkeypatch.setattr(listener, "_reconnect_delay", resubscribe.wait)
        raw = Redis.from_url(spare_redis.url, decode_responses=True)
        try:
            await raw.client_kill_filter(_type="pubsub")
            await _until(listener, lambda: not listener.up)
            assert len(state.cache.local) == 0
            # A bump announced while nobody listened is missed, yet no copy serves it.
            created = await _written_elsewhere(raw, owner, 28)
            after = await client.get("/api/members", headers=owner.headers)
            assert created in _ids(await after.get_json())
            again = await client.get("/api/members", headers=owner.headers)
            assert again.headers["X-Cache"] == "HIT"  # from Redis: nothing kept in-process
            assert len(state.cache.local) == 0

            resubscribe.set()
            await _until(listener, lambda: listener.up)
            await client.get("/api/members", headers=owner.headers)
            assert state.cache.local.get(key) is not None
        finally:
            await raw.aclose()
