"""The fast path (``koinonia/web/fast_path.py``): ``GET /health``, and ``GET /api/members``
(by page number, from the cache or the database) for a session this process holds, are
answered before Quart, exactly as Quart would answer them; whatever else comes (revoked or
expired session, another church, a role or an account without the permission, a query
outside the strict subset, a database error, another method) is Quart's to decide.

Each parity test sends the same request both ways (the fast path switched off, then on) and
compares status, headers and body, and checks which way answered (``fast_path.answered``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

import pytest

from koinonia.app import create_app
from koinonia.services import members
from koinonia.stores import sessions
from koinonia.stores.cache import MEMBERS, bump_versions, cache_key
from koinonia.web.state import get_state
from tests.conftest import church_user, register_church

REQUEST_ID = {"X-Request-ID": "parity-1"}
NUMBERED_PAGE = "/api/members?page=3&limit=20"


async def _until(listener, condition) -> None:
    async def wait() -> None:
        while not condition():
            await listener.changed.wait()

    await asyncio.wait_for(wait(), 1.0)


async def _warm(app, client, owner, n: int) -> str:
    """A member added, and the first page read until both the session and the page are in
    this process's memory; returns the page's key."""
    state = get_state(app)
    await _until(state.revocations, lambda: state.revocations.up)
    added = await client.post(
        "/api/members",
        headers=owner.headers,
        json={"firstName": f"F{n}", "phone": f"+1 415 556 {n:04d}"},
    )
    assert added.status_code == 201
    key = cache_key(MEMBERS, owner.church_id, "first", 50)
    for _ in range(2):
        assert (await client.get("/api/members", headers=owner.headers)).status_code == 200
    assert sessions.session_id_of(owner.token) in state.session_cache
    assert state.cache.local.get(key) is not None
    return key


async def _quart_then_fast(app, client, path: str, headers: dict[str, str], **kwargs):
    """(Quart's answer, the answer with the fast path on, whether the fast path gave it)."""
    fast = app.fast_path
    fast.enabled = False
    try:
        by_quart = await client.get(path, headers=headers, **kwargs)
    finally:
        fast.enabled = True
    before = fast.answered
    with_fast_path = await client.get(path, headers=headers, **kwargs)
    return by_quart, with_fast_path, fast.answered - before == 1


def _headers(response) -> list[tuple[str, str]]:
    return sorted((name.lower(), value) for name, value in response.headers.items())


async def _fast_answers(app, client, headers, path: str = "/api/members") -> int:
    """The status of a GET the fast path must not answer (asserted)."""
    before = app.fast_path.answered
    response = await client.get(path, headers=headers)
    assert app.fast_path.answered == before, "the fast path answered"
    return response.status_code


async def _add_members(church, count: int) -> None:
    """``count`` members straight through the service (no cache invalidation: add them
    before the first page is read)."""
    church_id = uuid.UUID(church.church_id)
    for n in range(count):
        await members.create_member(
            None,
            church_id,
            {"first_name": f"M{n}", "phone": f"+1 415 557 {n:04d}"},
            "US",
            user_id=None,
        )


# --- parity -----------------------------------------------------------------------------


async def test_a_warm_hit_answers_what_quart_answers_status_headers_and_body(app, client, church_a):
    await _warm(app, client, church_a, 1)
    by_quart, fast, answered_fast = await _quart_then_fast(
        app, client, "/api/members", church_a.headers | REQUEST_ID
    )
    assert answered_fast
    assert by_quart.status_code == fast.status_code == 200
    assert _headers(by_quart) == _headers(fast)
    assert fast.headers["X-Cache"] == "HIT"
    assert fast.headers["X-Request-ID"] == "parity-1"
    assert await by_quart.get_data() == await fast.get_data()


async def test_a_warm_hit_by_session_cookie_answers_what_quart_answers(app, client, church_a):
    await _warm(app, client, church_a, 2)
    cookie = {"Cookie": f"{app.koinonia.settings.session_cookie_name}={church_a.token}"}
    by_quart, fast, answered_fast = await _quart_then_fast(
        app, client, "/api/members", cookie | REQUEST_ID
    )
    assert answered_fast
    assert by_quart.status_code == fast.status_code == 200
    assert _headers(by_quart) == _headers(fast)
    assert await by_quart.get_data() == await fast.get_data()


async def test_a_fast_answer_gets_a_fresh_request_id_unless_a_valid_one_was_sent(
    app, client, church_a
):
    await _warm(app, client, church_a, 3)
    bad = church_a.headers | {"X-Request-ID": "bad id with spaces"}
    by_quart, fast, answered_fast = await _quart_then_fast(app, client, "/api/members", bad)
    assert answered_fast
    for response in (by_quart, fast):
        generated = response.headers["X-Request-ID"]
        assert len(generated) == 32 and int(generated, 16) >= 0
    assert by_quart.headers["X-Request-ID"] != fast.headers["X-Request-ID"]


async def test_a_fast_answer_is_counted_in_the_metrics_and_as_a_cache_hit_like_quarts(
    app, client, church_a
):
    await _warm(app, client, church_a, 4)
    state = get_state(app)
    registry = state.metrics.registry
    labels = {"route": "/api/members", "method": "GET", "status": "200"}

    def counts() -> tuple[float, float, float, int]:
        return (
            registry.get_sample_value("koinonia_http_requests_total", labels) or 0,
            registry.get_sample_value(
                "koinonia_http_request_duration_seconds_count",
                {"route": "/api/members", "method": "GET"},
            )
            or 0,
            registry.get_sample_value(
                "koinonia_cache_events_total", {"family": "members", "result": "hit"}
            )
            or 0,
            state.cache._unflushed["members:hit"],
        )

    start = counts()
    app.fast_path.enabled = False
    try:
        await client.get("/api/members", headers=church_a.headers)
    finally:
        app.fast_path.enabled = True
    after_quart = counts()
    before = app.fast_path.answered
    await client.get("/api/members", headers=church_a.headers)
    assert app.fast_path.answered == before + 1
    after_fast = counts()
    by_quart = [b - a for a, b in zip(start, after_quart, strict=True)]
    by_fast = [b - a for a, b in zip(after_quart, after_fast, strict=True)]
    assert by_quart == by_fast == [1, 1, 1, 1]


async def test_a_fast_answer_writes_the_access_log_line_quart_writes(app, client, church_a, caplog):
    await _warm(app, client, church_a, 5)
    edge = app.fast_path.edge
    edge.access_log = True
    try:
        with caplog.at_level(logging.INFO, logger="koinonia.access"):
            *_, answered_fast = await _quart_then_fast(
                app, client, "/api/members", church_a.headers | REQUEST_ID
            )
    finally:
        edge.access_log = app.koinonia.settings.access_log
    assert answered_fast
    lines = [r for r in caplog.records if r.name == "koinonia.access"]
    assert len(lines) == 2
    fields = [(r.getMessage(), r.method, r.path, r.status) for r in lines]
    assert fields == [("request", "GET", "/api/members", 200)] * 2
    assert all(r.durationMs >= 0 for r in lines)


async def test_health_answers_what_quart_answers_status_headers_and_body(app, client, monkeypatch):
    from koinonia.routes import health

    monkeypatch.setattr(health, "_now", lambda: "2026-12-07T03:00:00.000000Z")
    by_quart, fast, answered_fast = await _quart_then_fast(app, client, "/health", REQUEST_ID)
    assert answered_fast
    assert by_quart.status_code == fast.status_code == 200
    assert _headers(by_quart) == _headers(fast)
    assert await by_quart.get_data() == await fast.get_data()
    assert await fast.get_json() == {"status": "ok", "timestamp": "2026-12-07T03:00:00.000000Z"}


async def test_health_answered_fast_is_counted_under_its_route(app, client):
    registry = get_state(app).metrics.registry
    labels = {"route": "/health", "method": "GET", "status": "200"}
    before = registry.get_sample_value("koinonia_http_requests_total", labels) or 0
    answered = app.fast_path.answered
    assert (await client.get("/health")).status_code == 200
    assert app.fast_path.answered == answered + 1
    assert registry.get_sample_value("koinonia_http_requests_total", labels) == before + 1


async def test_health_with_a_query_or_by_head_is_quarts(app, client):
    before = app.fast_path.answered
    assert (await client.get("/health?verbose=1")).status_code == 200
    assert (await client.head("/health")).status_code == 200
    assert (await client.get("/health/live")).status_code == 200
    assert app.fast_path.answered == before


# --- numbered pages ----------------------------------------------------------------------


async def _a_page_answered_fast_as_quart_answers_it(app, client, church, query):
    """The page asked both ways (the first page cached first): the fast path answered, with
    Quart's status, headers and body. Returns the fast answer."""
    path = f"/api/members?{query}"
    assert (await client.get(path, headers=church.headers)).status_code == 200  # cached
    by_quart, fast, answered_fast = await _quart_then_fast(
        app, client, path, church.headers | REQUEST_ID
    )
    assert answered_fast
    assert by_quart.status_code == fast.status_code == 200
    assert _headers(by_quart) == _headers(fast)
    assert await by_quart.get_data() == await fast.get_data()
    return fast


@pytest.mark.parametrize(
    ("query", "x_cache", "page", "limit"),
    [
        ("page=3&limit=20", "BYPASS", 3, 20),
        ("limit=20&page=3", "BYPASS", 3, 20),
        ("limit=20", "HIT", 1, 20),
        ("page=1", "HIT", 1, 50),
        ("limit=20&page=1", "HIT", 1, 20),
    ],
)
async def test_a_numbered_page_answers_what_quart_answers_status_headers_and_body(
    app, client, church_a, query, x_cache, page, limit
):
    await _add_members(church_a, 44)
    await _warm(app, client, church_a, 20)
    fast = await _a_page_answered_fast_as_quart_answers_it(app, client, church_a, query)
    assert fast.headers["X-Cache"] == x_cache
    shown = await fast.get_json()
    assert shown["pagination"] | {"nextCursor": None} == {
        "limit": limit,
        "page": page,
        "total": 45,
        "nextCursor": None,
    }
    assert len(shown["data"]) == min(limit, 45 - (page - 1) * limit)


@pytest.mark.parametrize(
    "query", [f"limit={members.MAX_PAGE_SIZE}", "limit=1&page=2", "page=10000000&limit=1"]
)
async def test_the_ends_of_the_routes_ranges_are_answered_fast_as_quart_answers_them(
    app, client, church_a, query
):
    await _add_members(church_a, 2)
    await _warm(app, client, church_a, 24)
    await _a_page_answered_fast_as_quart_answers_it(app, client, church_a, query)


async def test_both_orders_of_page_and_limit_give_the_same_page(app, client, church_a):
    await _add_members(church_a, 44)
    await _warm(app, client, church_a, 21)
    before = app.fast_path.answered
    one = await client.get("/api/members?page=2&limit=20", headers=church_a.headers)
    other = await client.get("/api/members?limit=20&page=2", headers=church_a.headers)
    assert app.fast_path.answered == before + 2
    assert await one.get_data() == await other.get_data()
    assert len((await one.get_json())["data"]) == 20


async def test_a_database_error_on_a_numbered_page_is_answered_by_quart_as_without_the_fast_path(
    app, client, church_a, monkeypatch, caplog
):
    await _warm(app, client, church_a, 22)

    async def broken(*_args):
        raise OSError("connection refused")

    monkeypatch.setattr(members, "fetch_row", broken)
    with caplog.at_level(logging.ERROR, logger="koinonia.web.fast_path"):
        by_quart, with_fast_path, answered_fast = await _quart_then_fast(
            app, client, NUMBERED_PAGE, church_a.headers | REQUEST_ID
        )
    assert not answered_fast
    assert [r.getMessage() for r in caplog.records if r.name == "koinonia.web.fast_path"] == [
        "fast path failed; answered by Quart"
    ]
    assert by_quart.status_code == with_fast_path.status_code >= 500
    assert _headers(by_quart) == _headers(with_fast_path)
    assert await by_quart.get_data() == await with_fast_path.get_data()


# --- never the fast answer ---------------------------------------------------------------


async def test_a_logged_out_session_never_gets_the_fast_answer(app, client, church_a):
    await _warm(app, client, church_a, 10)
    logout = await app.test_client().post("/api/auth/logout", headers=church_a.headers)
    assert logout.status_code == 204
    assert await _fast_answers(app, client, church_a.headers) == 401


@pytest.mark.parametrize("path", ["/api/members", NUMBERED_PAGE])
async def test_a_session_revoked_by_another_process_never_gets_the_fast_answer(
    app, client, church_a, redis, path
):
    await _warm(app, client, church_a, 11)
    state = get_state(app)
    session_id = sessions.session_id_of(church_a.token)
    await sessions.revoke_session(redis, await sessions.read_session(redis, session_id))
    await _until(state.revocations, lambda: session_id not in state.session_cache)
    assert await _fast_answers(app, client, church_a.headers, path) == 401


async def test_a_session_past_the_cache_bound_is_read_from_redis_not_answered_fast(
    app, client, church_a, monkeypatch
):
    await _warm(app, client, church_a, 12)
    state = get_state(app)
    real = state.session_cache.clock
    later = real() + state.settings.session_cache_seconds + 0.001
    monkeypatch.setattr(state.session_cache, "clock", lambda: later)
    before = app.fast_path.answered
    # Quart reads the session from Redis (still valid there) and answers.
    response = await client.get("/api/members", headers=church_a.headers)
    assert response.status_code == 200
    assert app.fast_path.answered == before


async def test_a_page_of_a_bumped_version_is_reloaded_and_answered_as_quart_answers_a_miss(
    app, client, church_a, redis
):
    key = await _warm(app, client, church_a, 13)
    state = get_state(app)
    church_id = uuid.UUID(church_a.church_id)
    created = await members.create_member(
        None, church_id, {"first_name": "New", "phone": "+1 415 556 0099"}, "US", user_id=None
    )

    async def bumped() -> None:  # another app server's write, heard on the channel
        await bump_versions(redis, church_id)
        await _until(state.revocations, lambda: state.cache.local.get(key) is None)

    await bumped()
    app.fast_path.enabled = False
    try:
        by_quart = await client.get("/api/members", headers=church_a.headers | REQUEST_ID)
    finally:
        app.fast_path.enabled = True
    await bumped()
    before = app.fast_path.answered
    fast = await client.get("/api/members", headers=church_a.headers | REQUEST_ID)
    assert app.fast_path.answered == before + 1
    assert by_quart.status_code == fast.status_code == 200
    assert _headers(by_quart) == _headers(fast)
    assert fast.headers["X-Cache"] == "MISS"
    assert await by_quart.get_data() == await fast.get_data()
    assert str(created.id) in [m["id"] for m in (await fast.get_json())["data"]]


async def test_another_church_never_gets_this_churchs_page(app, client, church_a):
    await _warm(app, client, church_a, 14)
    other = await register_church(app.test_client(), "Other Church")
    # Its session cached, its own page not yet: the fast answer loads its own (empty) page.
    assert (await client.get("/api/auth/me", headers=other.headers)).status_code == 200
    before = app.fast_path.answered
    first = await client.get("/api/members", headers=other.headers)
    assert app.fast_path.answered == before + 1
    assert first.headers["X-Cache"] == "MISS"
    assert (await first.get_json())["data"] == []
    # From the cache too: its own page, never church A's.
    by_quart, fast, answered_fast = await _quart_then_fast(
        app, client, "/api/members", other.headers | REQUEST_ID
    )
    assert answered_fast
    assert fast.headers["X-Cache"] == "HIT"
    assert (await fast.get_json())["data"] == []
    assert await by_quart.get_data() == await fast.get_data()


@pytest.mark.parametrize("path", ["/api/members", NUMBERED_PAGE])
async def test_a_role_without_the_view_permission_never_gets_the_fast_answer(
    app, client, church_a, path
):
    staff = await church_user(app, church_a.church_id, "staff")
    await _warm(app, client, church_a, 15)
    await client.get("/api/members", headers=staff.headers)
    state = get_state(app)
    session_id = sessions.session_id_of(staff.token)
    session = state.session_cache.get(session_id)
    assert session is not None
    # The same session, held with a role that has no permission (one this code does not know).
    state.session_cache.put(
        dataclasses.replace(session, role="volunteer"), state.session_cache.epoch()
    )
    assert state.session_cache.get(session_id).role == "volunteer"
    assert await _fast_answers(app, client, staff.headers, path) == 403


async def test_an_account_without_a_church_never_gets_the_fast_answer(app, client, operator):
    state = get_state(app)
    await _until(state.revocations, lambda: state.revocations.up)
    for _ in range(2):
        assert await _fast_answers(app, client, operator.headers) == 403


async def test_without_a_session_or_with_an_unknown_one_quart_answers_401(app, client, church_a):
    await _warm(app, client, church_a, 16)
    assert await _fast_answers(app, client, {}) == 401
    assert await _fast_answers(app, client, {"Authorization": "Bearer not-a-session"}) == 401


@pytest.mark.parametrize(
    ("query", "quarts_status"),
    [
        ("cursor=not-a-cursor", 422),
        ("page=3&limit=20&sort=name", 200),
        ("page=3&page=4", 422),
        ("page=03", 200),
        ("page=+3", 200),
        ("page=0", 422),
        (f"limit={members.MAX_PAGE_SIZE + 1}", 422),
        ("page=10000001", 422),
        ("page=", 422),
        ("page=%33", 200),
        ("page=3&", 200),
        ("limit=0", 422),
    ],
)
async def test_a_query_outside_the_strict_subset_is_quarts(
    app, client, church_a, query, quarts_status
):
    await _warm(app, client, church_a, 17)
    path = f"/api/members?{query}"
    assert await _fast_answers(app, client, church_a.headers, path) == quarts_status


async def test_a_valid_cursor_is_quarts(app, client, church_a):
    await _add_members(church_a, 3)
    await _warm(app, client, church_a, 23)
    first = await client.get("/api/members?limit=2", headers=church_a.headers)
    cursor = (await first.get_json())["pagination"]["nextCursor"]
    assert cursor is not None
    path = f"/api/members?cursor={cursor}&limit=2"
    assert await _fast_answers(app, client, church_a.headers, path) == 200


async def test_other_methods_and_requests_with_a_body_go_to_quart(app, client, church_a):
    await _warm(app, client, church_a, 18)
    before = app.fast_path.answered
    head = await client.head("/api/members", headers=church_a.headers)
    assert head.status_code == 200
    # Quart's test client names no length; over HTTP a body always has one (or is chunked).
    with_body = await client.get(
        "/api/members", headers=church_a.headers | {"Content-Length": "1"}, data=b"x"
    )
    assert with_body.status_code == 200
    cookie = {"Cookie": f"{app.koinonia.settings.session_cookie_name}={church_a.token}"}
    # A cookie-authenticated POST still meets the CSRF check.
    forged = await client.post("/api/members", headers=cookie, json={"firstName": "X"})
    assert forged.status_code == 403
    assert app.fast_path.answered == before


def test_the_fast_path_is_off_when_the_setting_says_so(make_settings):
    assert create_app(make_settings()).fast_path.enabled is True
    assert create_app(make_settings(fast_path=False)).fast_path.enabled is False
