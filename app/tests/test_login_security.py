"""Hostile logins and session tokens: per-account lockout after repeated failures (counted
in Redis, the same for unknown emails), fail-closed without Redis, random revocable tokens,
cookie flags."""

from __future__ import annotations

import base64
import re
import uuid

import pytest

from koinonia.services.auth import login_failures_key
from koinonia.stores import sessions
from koinonia.web.state import get_state
from tests.conftest import app_using_redis, register_church

LOGIN = "/api/auth/login"


async def _login(client, email: str, password: str):
    return await client.post(LOGIN, json={"email": email, "password": password})


async def _fail(client, email: str, times: int) -> None:
    for _ in range(times):
        response = await _login(client, email, "wrong password")
        assert response.status_code == 401


async def test_account_is_locked_after_max_failures_even_with_the_right_password(
    client, church_a, settings
):
    await _fail(client, church_a.email, settings.login_max_failures)

    locked = await _login(client, church_a.email, church_a.password)

    assert locked.status_code == 429
    retry_after = int(locked.headers["Retry-After"])
    assert 0 < retry_after <= settings.login_lockout_seconds
    error = (await locked.get_json())["error"]
    assert error["code"] == "login_locked"
    assert error["details"] == {"retryAfter": retry_after}
    assert "Set-Cookie" not in locked.headers
    # Other accounts are not affected.
    other = await register_church(client)
    assert (await _login(client, other.email, other.password)).status_code == 200


async def test_unknown_email_is_counted_and_locked_like_a_real_one(client, church_a, settings):
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.org"
    await _fail(client, church_a.email, settings.login_max_failures)
    await _fail(client, unknown, settings.login_max_failures)

    real = await _login(client, church_a.email, "wrong password")
    fake = await _login(client, unknown, "wrong password")

    # Same status, same body, same header: the lockout does not reveal which email exists.
    assert real.status_code == fake.status_code == 429
    real_error, fake_error = (await real.get_json())["error"], (await fake.get_json())["error"]
    assert (real_error["code"], real_error["message"]) == (
        fake_error["code"],
        fake_error["message"],
    )
    assert "Retry-After" in fake.headers


async def test_successful_login_resets_the_failure_count(client, church_a, settings, redis):
    below_limit = settings.login_max_failures - 1
    await _fail(client, church_a.email, below_limit)
    assert (await _login(client, church_a.email, church_a.password)).status_code == 200
    assert not await redis.exists(login_failures_key(church_a.email))

    # Without the reset these would add up past the limit.
    await _fail(client, church_a.email, below_limit)
    assert (await _login(client, church_a.email, church_a.password)).status_code == 200


async def test_failures_count_per_normalised_email(client, church_a, settings):
    spelled = f"  {church_a.email.upper()} "
    await _fail(client, spelled, settings.login_max_failures)
    locked = await _login(client, church_a.email, church_a.password)
    assert locked.status_code == 429


async def test_lock_lives_in_an_expiring_redis_key_and_ends_with_it(
    client, church_a, settings, redis
):
    await _fail(client, church_a.email, settings.login_max_failures)
    key = login_failures_key(church_a.email)
    # The key names a hash, never the email itself.
    assert church_a.email not in key
    assert 0 < await redis.ttl(key) <= settings.login_lockout_seconds
    assert (await _login(client, church_a.email, church_a.password)).status_code == 429

    await redis.delete(key)  # what expiry does
    assert (await _login(client, church_a.email, church_a.password)).status_code == 200


async def test_login_fails_closed_with_503_when_redis_is_down(app, client, church_a, spare_redis):
    async with app_using_redis(app, spare_redis.url):
        with spare_redis.down():
            response = await _login(client, church_a.email, church_a.password)
    assert response.status_code == 503
    assert (await response.get_json())["error"]["code"] == "service_unavailable"


async def test_session_tokens_are_256_bit_random_url_safe(client, church_a):
    response = await _login(client, church_a.email, church_a.password)
    token = (await response.get_json())["token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token)
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 32
    assert token != church_a.token
    assert len({sessions.new_token() for _ in range(1000)}) == 1000


async def test_logout_by_cookie_revokes_the_session_and_clears_the_cookie(app, church_a, settings):
    cookie_client = app.test_client()
    login = await _login(cookie_client, church_a.email, church_a.password)
    token = (await login.get_json())["token"]

    logout = await cookie_client.post("/api/auth/logout", headers={"X-Requested-With": "fetch"})

    assert logout.status_code == 204
    cleared = logout.headers["Set-Cookie"]
    assert cleared.startswith(f"{settings.session_cookie_name}=;")
    assert "Max-Age=0" in cleared or "Expires=Thu, 01 Jan 1970" in cleared
    me = await app.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401


@pytest.fixture
def production_cookies(app):
    state = get_state(app)
    original = state.settings
    state.settings = original.model_copy(update={"environment": "production"})
    yield state.settings
    state.settings = original


async def test_cookie_is_httponly_samesite_and_secure_in_production(
    client, church_a, production_cookies
):
    response = await _login(client, church_a.email, church_a.password)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" in cookie
