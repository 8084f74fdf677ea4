"""Sessions: answered from each process's cache, never served once revoked.

Each race is made deterministic by pausing one side at the racy point (an ``asyncio.Event``
in a patched await) while the other side runs to completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import pytest
from quart.testing.connections import WebsocketDisconnectError
from redis.asyncio import Redis

from koinonia.routes.ws import SESSION_REVOKED_CLOSE_CODE
from koinonia.services import auth
from koinonia.stores import session_cache, sessions
from koinonia.stores.session_cache import RevocationListener
from koinonia.web.state import get_state
from tests.conftest import app_using_redis, register_church


async def _until(listener: RevocationListener, condition: Callable[[], bool]) -> None:
    """Wait (at most a second: the promised delay) for the listener to make ``condition``
    true; woken by each change it makes, no polling sleep."""

    async def wait() -> None:
        while not condition():
            await listener.changed.wait()

    await asyncio.wait_for(wait(), 1.0)


def _listener(app) -> RevocationListener:
    listener = get_state(app).revocations
    assert listener is not None
    return listener


async def _me(client, owner) -> int:
    return (await client.get("/api/auth/me", headers=owner.headers)).status_code


async def test_session_revoked_by_another_process_is_refused_within_a_second(
    app, client, church_a, redis
):
    state = get_state(app)
    listener = _listener(app)
    await _until(listener, lambda: listener.up)
    session_id = sessions.session_id_of(church_a.token)
    assert await _me(client, church_a) == 200
    assert session_id in state.session_cache  # answered in-process from now on

    # Another app server logs the session out: its own Redis client, its own process.
    session = await sessions.read_session(redis, session_id)
    await sessions.revoke_session(redis, session)

    await _until(listener, lambda: session_id not in state.session_cache)
    assert await _me(client, church_a) == 401


async def test_cached_session_is_answered_without_redis_and_never_past_the_bound(
    app, client, church_a, redis, monkeypatch
):
    state = get_state(app)
    listener = _listener(app)
    await _until(listener, lambda: listener.up)
    now = [1_000_000_000.0 + 0]
    monkeypatch.setattr(state.session_cache, "clock", lambda: now[0])
    session_id = sessions.session_id_of(church_a.token)
    assert await _me(client, church_a) == 200

    # A revocation whose message never arrived (deleted behind the cache's back): the
    # cached entry answers within the bound, and not a moment past it.
    await redis.delete(sessions.SESSION_PREFIX + session_id)
    assert await _me(client, church_a) == 200
    now[0] += state.settings.session_cache_seconds + 0.001
    assert await _me(client, church_a) == 401


async def test_a_lookup_that_raced_a_revocation_does_not_cache_what_it_read(
    app, client, church_a, monkeypatch
):
    state = get_state(app)
    listener = _listener(app)
    await _until(listener, lambda: listener.up)
    session_id = sessions.session_id_of(church_a.token)
    state.session_cache.evict([session_id])
    read, release = asyncio.Event(), asyncio.Event()
    real_read = session_cache.sessions.read_session

    async def read_then_pause(redis: Redis, wanted: str):
        found = await real_read(redis, wanted)
        if wanted == session_id and not read.is_set():  # the first lookup only
            read.set()
            await release.wait()
        return found

    monkeypatch.setattr(session_cache.sessions, "read_session", read_then_pause)
    # The lookup has read the live session from Redis and pauses before storing it...
    lookup = asyncio.create_task(client.get("/api/auth/me", headers=church_a.headers))
    await asyncio.wait_for(read.wait(), 5)
    # ...while the session is logged out through another client.
    logout = await app.test_client().post("/api/auth/logout", headers=church_a.headers)
    assert logout.status_code == 204
    release.set()
    assert (await lookup).status_code == 200  # it was valid when that request began
    assert session_id not in state.session_cache
    assert await _me(client, church_a) == 401


async def test_without_the_revocation_subscription_the_cache_is_cleared_and_bypassed(
    app, spare_redis, monkeypatch
):
    async with app_using_redis(app, spare_redis.url):
        state = get_state(app)
        listener = _listener(app)
        client = app.test_client()
        owner = await register_church(app.test_client())
        await _until(listener, lambda: listener.up)
        assert await _me(client, owner) == 200
        session_id = sessions.session_id_of(owner.token)
        assert session_id in state.session_cache

        resubscribe = asyncio.Event()
        monkeypatch.setattr(listener, "_reconnect_delay", resubscribe.wait)
        raw = Redis.from_url(spare_redis.url, decode_responses=True)
        try:
            # The subscription's connection is cut: cache emptied and no longer consulted.
            await raw.client_kill_filter(_type="pubsub")
            await _until(listener, lambda: not listener.up)
            assert len(state.session_cache) == 0
            # A revocation published while nobody listened is missed, yet not served.
            await raw.delete(sessions.SESSION_PREFIX + session_id)
            assert await _me(client, owner) == 401
            other = await register_church(app.test_client())
            assert await _me(client, other) == 200
            assert sessions.session_id_of(other.token) not in state.session_cache

            resubscribe.set()
            await _until(listener, lambda: listener.up)
            assert await _me(client, other) == 200
            assert sessions.session_id_of(other.token) in state.session_cache
        finally:
            await raw.aclose()

        # Redis itself gone: no cached session keeps anyone in; the store is unavailable.
        monkeypatch.setattr(listener, "_reconnect_delay", asyncio.Event().wait)
        with spare_redis.down():
            await _until(listener, lambda: not listener.up)
            assert await _me(client, other) == 503


@contextlib.asynccontextmanager
async def login_paused_after_its_password_check(app, user, monkeypatch):
    """A login of ``user`` that has checked the password and waits, before it creates its
    session, until the block ends; yields the task that answers it."""
    checked, release = asyncio.Event(), asyncio.Event()
    real_verify = auth.verify_password

    async def verify_then_pause(password_hash: str, password: str) -> bool:
        ok = await real_verify(password_hash, password)
        if not checked.is_set():
            checked.set()
            await release.wait()
        return ok

    monkeypatch.setattr(auth, "verify_password", verify_then_pause)
    login = asyncio.create_task(
        app.test_client().post(
            "/api/auth/login", json={"email": user.email, "password": user.password}
        )
    )
    await asyncio.wait_for(checked.wait(), 10)
    try:
        yield login
    finally:
        release.set()


async def test_login_that_raced_a_password_change_gets_no_session(app, church_a, monkeypatch):
    async with login_paused_after_its_password_check(app, church_a, monkeypatch) as login:
        changed = await app.test_client().post(
            "/api/auth/password",
            headers=church_a.headers,
            json={"currentPassword": church_a.password, "newPassword": "a brand new passphrase"},
        )
        assert changed.status_code == 204

    response = await login
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "password_changed"
    assert "token" not in (await response.get_json())


async def test_login_that_raced_revoke_all_sessions_gets_no_session(
    app, church_a, redis, monkeypatch
):
    async with login_paused_after_its_password_check(app, church_a, monkeypatch) as login:
        # An operator logs everyone out (`koinonia revoke-sessions`); its scan has passed
        # by the time the login goes on.
        assert await sessions.revoke_all_sessions(redis) >= 1

    response = await login
    assert response.status_code == 401
    body = await response.get_json()
    assert body["error"]["code"] == "sessions_revoked"
    assert "token" not in body
    # A login after the revocation works.
    again = await app.test_client().post(
        "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
    )
    assert again.status_code == 200


async def test_session_index_names_every_session_created_while_revoking(
    app, church_a, servers, monkeypatch
):
    """The revocation pauses after its first Redis reply while a login completes: the new
    session must then be either revoked or still in the user's index, never orphaned."""
    revoker = Redis.from_url(servers.redis.url, decode_responses=True)
    replied, release = asyncio.Event(), asyncio.Event()
    real_execute = revoker.execute_command

    async def execute_then_pause(*args, **kwargs):
        result = await real_execute(*args, **kwargs)
        if not replied.is_set() and str(args[0]).upper() != "SCRIPT":
            replied.set()
            await release.wait()
        return result

    monkeypatch.setattr(revoker, "execute_command", execute_then_pause)
    try:
        revoking = asyncio.create_task(sessions.revoke_user_sessions(revoker, church_a.user_id))
        await asyncio.wait_for(replied.wait(), 5)
        login = await app.test_client().post(
            "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
        )
        release.set()
        await revoking
    finally:
        await revoker.aclose()

    assert login.status_code == 200
    live = set()
    async with Redis.from_url(servers.redis.url, decode_responses=True) as redis:
        async for key in redis.scan_iter(match=sessions.SESSION_PREFIX + "*"):
            raw = await redis.get(key)
            if raw and json.loads(raw)["user_id"] == church_a.user_id:
                live.add(key.removeprefix(sessions.SESSION_PREFIX))
        indexed = await redis.smembers(sessions.USER_SESSIONS_PREFIX + church_a.user_id)
    assert live <= indexed


async def _receive_close(ws) -> int:
    with pytest.raises(WebsocketDisconnectError) as closed:
        while True:
            await asyncio.wait_for(ws.receive(), 5)
    return closed.value.args[0]


@pytest.mark.parametrize("revocation", ["logout", "password change", "another process"])
async def test_websocket_is_closed_when_its_session_is_revoked(app, church_a, redis, revocation):
    async with app.test_client().websocket("/api/ws", headers=church_a.headers) as ws:
        assert json.loads(await asyncio.wait_for(ws.receive(), 5))["type"] == "ready"
        if revocation == "logout":
            response = await app.test_client().post("/api/auth/logout", headers=church_a.headers)
            assert response.status_code == 204
        elif revocation == "password change":
            response = await app.test_client().post(
                "/api/auth/password",
                headers=church_a.headers,
                json={"currentPassword": church_a.password, "newPassword": "another passphrase"},
            )
            assert response.status_code == 204
        else:
            session_id = sessions.session_id_of(church_a.token)
            await sessions.revoke_session(redis, await sessions.read_session(redis, session_id))
        assert await _receive_close(ws) == SESSION_REVOKED_CLOSE_CODE
    with contextlib.suppress(Exception):
        await ws.disconnect()


@pytest.mark.parametrize("value", ["-1", "30.5", "five"])
def test_session_cache_bound_outside_0_to_30_seconds_is_refused_naming_the_setting(
    monkeypatch, settings, value
):
    from koinonia.settings import SettingsError, load_settings

    monkeypatch.setenv("KOINONIA_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("KOINONIA_REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("KOINONIA_SESSION_CACHE_SECONDS", value)
    with pytest.raises(SettingsError, match="KOINONIA_SESSION_CACHE_SECONDS"):
        load_settings()
    monkeypatch.setenv("KOINONIA_SESSION_CACHE_SECONDS", "30")
    assert load_settings().session_cache_seconds == 30
