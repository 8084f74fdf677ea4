"""Registration, login, sessions shared by bearer and cookie, revocation."""

from __future__ import annotations

import asyncio
import threading
import uuid

from koinonia.services import auth
from tests.conftest import register_church


async def test_register_returns_token_user_and_cookie(client, settings):
    email = f"new-{uuid.uuid4().hex[:8]}@Example.org"
    response = await client.post(
        "/api/auth/register",
        json={"churchName": "St Mark", "email": email, "password": "long enough pw"},
    )
    assert response.status_code == 201
    body = await response.get_json()
    assert body["user"]["email"] == email.lower()
    assert body["user"]["role"] == "owner"
    assert body["user"]["churchId"]
    assert "passwordHash" not in body["user"]
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{settings.session_cookie_name}={body['token']}")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Max-Age=86400" in cookie
    assert "Secure" not in cookie  # test settings: not production


async def test_register_duplicate_email_is_409(client, church_a):
    response = await client.post(
        "/api/auth/register",
        json={"churchName": "Other", "email": church_a.email, "password": "long enough pw"},
    )
    assert response.status_code == 409
    assert (await response.get_json())["error"]["code"] == "conflict"


async def test_register_validation_error_shape(client):
    response = await client.post(
        "/api/auth/register", json={"churchName": "", "email": "nope", "password": "x"}
    )
    assert response.status_code == 422
    error = (await response.get_json())["error"]
    assert error["code"] == "validation_error"
    fields = {d["field"] for d in error["details"]}
    assert {"churchName", "email", "password"} <= fields


async def test_malformed_json_is_400_not_500(client):
    response = await client.post(
        "/api/auth/login", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    body = await response.get_json()
    assert body["error"]["code"] == "bad_request"
    assert "Traceback" not in await response.get_data(as_text=True)


async def test_login_and_me_with_bearer_and_cookie(client, app, church_a, settings):
    response = await client.post(
        "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
    )
    assert response.status_code == 200
    token = (await response.get_json())["token"]

    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert (await me.get_json())["user"]["id"] == church_a.user_id

    cookie_client = app.test_client()
    cookie_client.set_cookie("localhost", settings.session_cookie_name, token)
    me_cookie = await cookie_client.get("/api/auth/me")
    assert me_cookie.status_code == 200
    assert (await me_cookie.get_json())["user"]["id"] == church_a.user_id


async def test_wrong_password_and_unknown_email_answer_the_same(client, church_a):
    wrong = await client.post(
        "/api/auth/login", json={"email": church_a.email, "password": "wrong password"}
    )
    unknown = await client.post(
        "/api/auth/login", json={"email": "nobody@example.org", "password": "wrong password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert await wrong.get_json() == await unknown.get_json()


async def test_me_without_or_with_bad_token_is_401(client):
    assert (await client.get("/api/auth/me")).status_code == 401
    bad = await client.get("/api/auth/me", headers={"Authorization": "Bearer not-a-session"})
    assert bad.status_code == 401
    assert (await bad.get_json())["error"]["code"] == "unauthorized"


async def test_logout_revokes_the_session(client, church_a):
    other = await client.post(
        "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
    )
    other_token = (await other.get_json())["token"]

    response = await client.post("/api/auth/logout", headers=church_a.headers)
    assert response.status_code == 204
    assert (await client.get("/api/auth/me", headers=church_a.headers)).status_code == 401
    # Only that session: the other login still works.
    still = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {other_token}"})
    assert still.status_code == 200


async def test_password_change_revokes_every_session(client, church_a):
    second = await client.post(
        "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
    )
    second_headers = {"Authorization": f"Bearer {(await second.get_json())['token']}"}

    wrong = await client.post(
        "/api/auth/password",
        headers=church_a.headers,
        json={"currentPassword": "not it", "newPassword": "a brand new password"},
    )
    assert wrong.status_code == 401
    assert (await client.get("/api/auth/me", headers=church_a.headers)).status_code == 200

    changed = await client.post(
        "/api/auth/password",
        headers=church_a.headers,
        json={"currentPassword": church_a.password, "newPassword": "a brand new password"},
    )
    assert changed.status_code == 204
    assert (await client.get("/api/auth/me", headers=church_a.headers)).status_code == 401
    assert (await client.get("/api/auth/me", headers=second_headers)).status_code == 401

    old = await client.post(
        "/api/auth/login", json={"email": church_a.email, "password": church_a.password}
    )
    assert old.status_code == 401
    new = await client.post(
        "/api/auth/login", json={"email": church_a.email, "password": "a brand new password"}
    )
    assert new.status_code == 200


async def test_session_is_stored_in_redis_with_24h_ttl(client, redis):
    owner = await register_church(client)
    keys = [k async for k in redis.scan_iter(match="session:*")]
    assert keys
    # The token itself is never a key (only its hash).
    assert not await redis.exists(f"session:{owner.token}")
    ttls = [await redis.ttl(k) for k in keys]
    assert all(0 < t <= 86400 for t in ttls)


async def test_session_cookie_secure_in_production(make_settings):
    assert make_settings(environment="production").session_cookie_secure is True
    assert (
        make_settings(environment="production", cookie_secure=False).session_cookie_secure is False
    )
    assert make_settings().session_cookie_secure is False


async def test_body_over_limit_is_413(client, settings):
    response = await client.post(
        "/api/auth/login",
        data=b"x" * (settings.max_body_bytes + 1),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert (await response.get_json())["error"]["code"] == "payload_too_large"


async def test_unknown_route_and_wrong_method_use_error_shape(client):
    missing = await client.get("/api/nope")
    assert missing.status_code == 404
    assert (await missing.get_json())["error"]["code"] == "not_found"
    wrong = await client.put("/api/auth/login", json={})
    assert wrong.status_code == 405
    assert (await wrong.get_json())["error"]["code"] == "method_not_allowed"


async def test_a_burst_of_logins_runs_one_argon2_check_at_a_time(monkeypatch):
    # Each check holds 64 MiB and already spreads over the cores: overlapping ones only
    # multiply the memory of a login burst.
    running, most = 0, 0
    lock = threading.Lock()
    real = auth._hasher

    class CountingHasher:
        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, password_hash: str, password: str) -> bool:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                return real.verify(password_hash, password)
            finally:
                with lock:
                    running -= 1

    monkeypatch.setattr(auth, "_hasher", CountingHasher())
    stored = await auth.hash_password("a burst of logins")
    results = await asyncio.gather(
        *(auth.verify_password(stored, "a burst of logins") for _ in range(6))
    )
    assert results == [True] * 6
    assert most == 1
