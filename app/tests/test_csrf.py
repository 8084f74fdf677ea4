"""CSRF: state-changing requests authenticated by the session cookie must come from our own
origin (or carry X-Requested-With); bearer tokens are unaffected; login/register refuse a
foreign page; the WebSocket refuses a foreign page using the cookie."""

from __future__ import annotations

import pytest
from quart.testing import WebsocketResponseError

from koinonia.models.core import Member, User
from koinonia.settings import SettingsError, load_settings
from koinonia.web.state import get_state

OWN = "http://localhost:3000"  # origin of the test settings' public_base_url
EVIL = "https://evil.example.org"
NEW_MEMBER = {"firstName": "Csrf", "phone": "+1 617 555 0199"}


@pytest.fixture
def cookie_client(app, church_a, settings):
    """A browser-like client: authenticated only by church A's session cookie."""
    test_client = app.test_client()
    test_client.set_cookie("localhost", settings.session_cookie_name, church_a.token)
    return test_client


async def _created_members(church_a) -> int:
    return await Member.filter(church_id=church_a.church_id).count()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": EVIL},
        {"Origin": EVIL, "X-Requested-With": "fetch"},
        {"Origin": "null"},
        {"Referer": EVIL + "/page"},
        {"Origin": "http://localhost:3001"},
        {"Origin": "https://localhost:3000"},
    ],
    ids=[
        "no-origin-no-header",
        "foreign-origin",
        "foreign-origin-with-header",
        "null-origin",
        "foreign-referer",
        "other-port",
        "other-scheme",
    ],
)
async def test_cookie_write_from_elsewhere_is_refused_and_changes_nothing(
    cookie_client, church_a, headers
):
    response = await cookie_client.post("/api/members", json=NEW_MEMBER, headers=headers)

    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "csrf_rejected"
    assert await _created_members(church_a) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": OWN},
        {"Origin": "HTTP://LOCALHOST:3000"},
        {"Referer": OWN + "/members/new"},
        {"X-Requested-With": "XMLHttpRequest"},
    ],
    ids=["own-origin", "own-origin-other-case", "own-referer", "custom-header"],
)
async def test_cookie_write_from_own_pages_is_accepted(cookie_client, church_a, headers):
    response = await cookie_client.post("/api/members", json=NEW_MEMBER, headers=headers)
    assert response.status_code == 201
    assert await _created_members(church_a) == 1


async def test_every_unsafe_method_is_checked(cookie_client, client, church_a):
    member = await (
        await client.post("/api/members", json=NEW_MEMBER, headers=church_a.headers)
    ).get_json()
    path = f"/api/members/{member['id']}"

    patched = await cookie_client.patch(path, json={"firstName": "X"}, headers={"Origin": EVIL})
    deleted = await cookie_client.delete(path, headers={"Origin": EVIL})
    logout = await cookie_client.post("/api/auth/logout", headers={"Origin": EVIL})

    assert [r.status_code for r in (patched, deleted, logout)] == [403, 403, 403]
    stored = await client.get(path, headers=church_a.headers)
    assert (await stored.get_json())["firstName"] == "Csrf"
    # The session survived the forged logout.
    assert (await cookie_client.get("/api/auth/me")).status_code == 200


async def test_cookie_reads_are_not_checked(cookie_client):
    # GET changes nothing, and SameSite plus CORS keep its answer from a foreign page.
    response = await cookie_client.get("/api/members", headers={"Origin": EVIL})
    assert response.status_code == 200


async def test_bearer_token_requests_are_not_affected(client, church_a, settings):
    response = await client.post(
        "/api/members", json=NEW_MEMBER, headers={**church_a.headers, "Origin": EVIL}
    )
    assert response.status_code == 201


async def test_configured_trusted_origin_is_accepted(app, cookie_client, church_a):
    state = get_state(app)
    original = state.settings
    state.settings = original.model_copy(
        update={"csrf_trusted_origins": ["https://admin.example.org"]}
    )
    try:
        response = await cookie_client.post(
            "/api/members", json=NEW_MEMBER, headers={"Origin": "https://admin.example.org"}
        )
    finally:
        state.settings = original
    assert response.status_code == 201


async def test_login_and_register_from_a_foreign_page_are_refused(client, church_a):
    login = await client.post(
        "/api/auth/login",
        json={"email": church_a.email, "password": church_a.password},
        headers={"Origin": EVIL},
    )
    assert login.status_code == 403
    assert (await login.get_json())["error"]["code"] == "csrf_rejected"
    assert "Set-Cookie" not in login.headers

    email = "csrf-register@example.org"
    register = await client.post(
        "/api/auth/register",
        json={"churchName": "Evil", "email": email, "password": "long enough pw"},
        headers={"Referer": EVIL + "/signup"},
    )
    assert register.status_code == 403
    assert not await User.exists(email=email)


async def test_login_from_own_page_or_without_origin_is_accepted(client, church_a):
    for headers in ({"Origin": OWN}, {}):
        response = await client.post(
            "/api/auth/login",
            json={"email": church_a.email, "password": church_a.password},
            headers=headers,
        )
        assert response.status_code == 200, headers


async def test_websocket_with_cookie_from_a_foreign_page_is_refused(cookie_client, church_a):
    with pytest.raises(WebsocketResponseError) as refused:
        async with cookie_client.websocket("/api/ws", headers={"Origin": EVIL}) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 403

    async with cookie_client.websocket("/api/ws", headers={"Origin": OWN}) as ws:
        assert '"ready"' in await ws.receive()


def test_trusted_origins_setting_is_comma_separated_and_normalised(monkeypatch, settings):
    monkeypatch.setenv("KOINONIA_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("KOINONIA_REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv(
        "KOINONIA_CSRF_TRUSTED_ORIGINS", "https://Admin.example.org:443/, http://10.0.0.5:8080"
    )
    loaded = load_settings()
    assert loaded.csrf_trusted_origins == ["https://admin.example.org", "http://10.0.0.5:8080"]
    assert loaded.trusted_origins == {
        "http://localhost:3000",
        "https://admin.example.org",
        "http://10.0.0.5:8080",
    }

    monkeypatch.setenv("KOINONIA_CSRF_TRUSTED_ORIGINS", "not an origin")
    with pytest.raises(SettingsError, match="KOINONIA_CSRF_TRUSTED_ORIGINS"):
        load_settings()
