"""Staff: invites, roles, removal, ownership transfer, and the church's last owner."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from quart.testing.connections import WebsocketDisconnectError
from tortoise import connections

from koinonia.models.core import Role, StaffInvite, User
from koinonia.routes.ws import SESSION_REVOKED_CLOSE_CODE
from koinonia.services import staff
from tests.conftest import church_user, log_in


async def _invite(client, owner, email: str, role: str = "staff"):
    response = await client.post(
        "/api/staff/invites", headers=owner.headers, json={"email": email, "role": role}
    )
    return response, await response.get_json()


async def _accept(client, token: str):
    return await client.post(
        "/api/auth/invites/accept",
        json={
            "token": token,
            "password": "a new staff passphrase",
            "firstName": "Sam",
            "lastName": "Staff",
        },
    )


async def test_invitee_joins_the_church_with_the_invited_role_once(client, church_a):
    created, invite = await _invite(client, church_a, "Sam.Staff@Example.org", "admin")
    assert created.status_code == 201, invite
    assert invite["email"] == "sam.staff@example.org" and invite["role"] == "admin"
    token = invite["token"]
    # Only the token's hash is stored, and the list never shows the token.
    stored = await StaffInvite.get(id=invite["id"])
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(
        await (await client.get("/api/staff/invites", headers=church_a.headers)).get_json()
    )

    accepted = await _accept(client, token)

    assert accepted.status_code == 201, await accepted.get_data(as_text=True)
    session = await accepted.get_json()
    joined = session["user"]
    assert joined["churchId"] == church_a.church_id and joined["role"] == "admin"
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {session['token']}"})
    assert me.status_code == 200
    again = await _accept(client, token)
    assert again.status_code == 404
    assert (await again.get_json())["error"]["code"] == "invite_not_found"
    invites = await (await client.get("/api/staff/invites", headers=church_a.headers)).get_json()
    assert invites["data"] == []
    listed = await (await client.get("/api/staff", headers=church_a.headers)).get_json()
    assert {(u["email"], u["role"]) for u in listed["data"]} == {
        (church_a.email, "owner"),
        ("sam.staff@example.org", "admin"),
    }


async def test_expired_or_cancelled_invite_does_not_work(client, church_a):
    _, expired = await _invite(client, church_a, "late@example.org")
    await StaffInvite.filter(id=expired["id"]).update(
        expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    _, cancelled = await _invite(client, church_a, "cancelled@example.org")
    listed = await (await client.get("/api/staff/invites", headers=church_a.headers)).get_json()
    assert {i["email"]: i["expired"] for i in listed["data"]} == {
        "late@example.org": True,
        "cancelled@example.org": False,
    }
    gone = await client.delete(f"/api/staff/invites/{cancelled['id']}", headers=church_a.headers)
    assert gone.status_code == 204

    for token in (expired["token"], cancelled["token"]):
        response = await _accept(client, token)
        assert response.status_code == 404
    assert not await User.filter(email__in=["late@example.org", "cancelled@example.org"]).exists()


async def test_inviting_again_replaces_the_earlier_token(client, church_a):
    _, first = await _invite(client, church_a, "twice@example.org")
    _, second = await _invite(client, church_a, "twice@example.org")

    assert (await _accept(client, first["token"])).status_code == 404
    assert (await _accept(client, second["token"])).status_code == 201


async def test_an_email_with_an_account_cannot_be_invited(client, church_a, church_b):
    response, body = await _invite(client, church_a, church_b.email)
    assert response.status_code == 409 and "already exists" in body["error"]["message"]


async def test_bad_invite_input_names_the_field(client, church_a):
    response, body = await _invite(client, church_a, "not-an-email", "boss")
    assert response.status_code == 422
    assert {d["field"] for d in body["error"]["details"]} == {"email", "role"}
    short = await client.post("/api/auth/invites/accept", json={"token": "x", "password": "short"})
    assert short.status_code == 422
    assert [d["field"] for d in (await short.get_json())["error"]["details"]] == ["password"]


async def test_only_an_owner_makes_invites_demotes_or_removes_an_owner(app, client, church_a):
    admin = await church_user(app, church_a.church_id, "admin")
    other = await church_user(app, church_a.church_id, "staff")

    refused = [
        await client.post(
            "/api/staff/invites",
            headers=admin.headers,
            json={"email": "new-owner@example.org", "role": "owner"},
        ),
        await client.patch(
            f"/api/staff/{other.user_id}", headers=admin.headers, json={"role": "owner"}
        ),
        await client.patch(
            f"/api/staff/{church_a.user_id}", headers=admin.headers, json={"role": "staff"}
        ),
        await client.delete(f"/api/staff/{church_a.user_id}", headers=admin.headers),
    ]

    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert (await User.get(id=church_a.user_id)).role == Role.OWNER
    assert (await User.get(id=other.user_id)).role == Role.STAFF
    # What an admin may do: staff to admin and back.
    promoted = await client.patch(
        f"/api/staff/{other.user_id}", headers=admin.headers, json={"role": "admin"}
    )
    assert promoted.status_code == 200 and (await promoted.get_json())["role"] == "admin"


async def test_the_last_owner_cannot_be_demoted_or_removed(app, client, church_a):
    demoted = await client.patch(
        f"/api/staff/{church_a.user_id}", headers=church_a.headers, json={"role": "admin"}
    )
    removed = await client.delete(f"/api/staff/{church_a.user_id}", headers=church_a.headers)

    for response in (demoted, removed):
        assert response.status_code == 409
        assert (await response.get_json())["error"]["code"] == "last_owner"
    assert (await User.get(id=church_a.user_id)).role == Role.OWNER
    # With a second owner, the first may step down.
    second = await church_user(app, church_a.church_id, "owner")
    stepped_down = await client.patch(
        f"/api/staff/{church_a.user_id}", headers=second.headers, json={"role": "admin"}
    )
    assert stepped_down.status_code == 200


async def _receive_close(ws) -> int:
    with pytest.raises(WebsocketDisconnectError) as closed:
        while True:
            await asyncio.wait_for(ws.receive(), 5)
    return closed.value.args[0]


@pytest.mark.parametrize("change", ["demoted", "removed"])
async def test_a_demoted_or_removed_user_loses_sessions_and_websockets_at_once(
    app, client, church_a, change
):
    admin = await church_user(app, church_a.church_id, "admin")
    async with app.test_client().websocket("/api/ws", headers=admin.headers) as ws:
        assert json.loads(await asyncio.wait_for(ws.receive(), 5))["type"] == "ready"
        if change == "demoted":
            response = await client.patch(
                f"/api/staff/{admin.user_id}", headers=church_a.headers, json={"role": "staff"}
            )
            assert response.status_code == 200
        else:
            response = await client.delete(f"/api/staff/{admin.user_id}", headers=church_a.headers)
            assert response.status_code == 204

        assert await _receive_close(ws) == SESSION_REVOKED_CLOSE_CODE
    with contextlib.suppress(Exception):
        await ws.disconnect()
    assert (await client.get("/api/auth/me", headers=admin.headers)).status_code == 401
    login = await client.post(
        "/api/auth/login", json={"email": admin.email, "password": admin.password}
    )
    if change == "removed":
        assert login.status_code == 401
    else:
        again = await log_in(app, admin.email, admin.password)
        analytics = await client.get("/api/analytics/summary", headers=again.headers)
        assert analytics.status_code == 403  # staff now: no analytics


async def test_ownership_transfer_swaps_the_roles_and_ends_both_sessions(app, client, church_a):
    admin = await church_user(app, church_a.church_id, "admin")

    response = await client.post(f"/api/staff/{admin.user_id}/ownership", headers=church_a.headers)

    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["owner"]["id"] == admin.user_id and body["owner"]["role"] == "owner"
    assert body["previousOwner"]["id"] == church_a.user_id
    assert body["previousOwner"]["role"] == "admin"
    for user in (church_a, admin):
        assert (await client.get("/api/auth/me", headers=user.headers)).status_code == 401
    new_owner = await log_in(app, admin.email, admin.password)
    numbers = await client.post(
        "/api/phone-numbers", headers=new_owner.headers, json={"number": "+14155550100"}
    )
    assert numbers.status_code != 403


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(app, church_a, monkeypatch):
    second = await church_user(app, church_a.church_id, "owner")
    counted = asyncio.Event()
    release = asyncio.Event()
    real_count = staff.count_owners

    async def count_then_pause(church_id):
        owners = await real_count(church_id)
        if not counted.is_set():  # only the first demotion pauses, holding the lock
            counted.set()
            await release.wait()
        return owners

    monkeypatch.setattr(staff, "count_owners", count_then_pause)

    first = asyncio.create_task(
        app.test_client().patch(
            f"/api/staff/{second.user_id}", headers=church_a.headers, json={"role": "admin"}
        )
    )
    await asyncio.wait_for(counted.wait(), 5)  # the first saw two owners, and waits
    other = asyncio.create_task(
        app.test_client().patch(
            f"/api/staff/{church_a.user_id}", headers=second.headers, json={"role": "admin"}
        )
    )
    await _until_a_query_waits_for_a_lock()
    release.set()
    responses = await asyncio.gather(first, other)

    assert sorted(r.status_code for r in responses) == [200, 409]
    owners = await User.filter(church_id=church_a.church_id, role=Role.OWNER).count()
    assert owners == 1


async def _until_a_query_waits_for_a_lock(limit: int = 500) -> None:
    """Until PostgreSQL shows a statement waiting on a row lock (the second demotion)."""
    connection = connections.get("default")
    for _ in range(limit):
        rows = await connection.execute_query_dict(
            "SELECT count(*) AS waiting FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        if rows[0]["waiting"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second demotion never waited for the church's lock")


async def test_a_login_that_read_the_old_role_gets_a_session_with_the_new_one(
    app, client, church_a, monkeypatch
):
    from koinonia.stores import sessions

    admin = await church_user(app, church_a.church_id, "admin")
    reached, release = asyncio.Event(), asyncio.Event()
    real_generation = sessions.user_generation

    async def pause_then_read(redis, user_id):
        reached.set()
        await release.wait()
        return await real_generation(redis, user_id)

    monkeypatch.setattr(sessions, "user_generation", pause_then_read)
    # The login has found the account (an admin) and pauses before it reads the generation...
    login = asyncio.create_task(
        app.test_client().post(
            "/api/auth/login", json={"email": admin.email, "password": admin.password}
        )
    )
    await asyncio.wait_for(reached.wait(), 5)
    # ...while the owner demotes the admin.
    demoted = await client.patch(
        f"/api/staff/{admin.user_id}", headers=church_a.headers, json={"role": "staff"}
    )
    assert demoted.status_code == 200
    release.set()

    response = await login
    assert response.status_code == 200
    body = await response.get_json()
    assert body["user"]["role"] == "staff"
    summary = await client.get(
        "/api/analytics/summary", headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert summary.status_code == 403
