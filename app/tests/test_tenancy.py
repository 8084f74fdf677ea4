"""Tenant isolation: church B sees 404 for every church-A resource id, and lists never leak."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from koinonia.app import create_app
from koinonia.models.core import Role
from koinonia.services.permissions import ROLE_PERMISSIONS, Permission
from koinonia.settings import Settings
from koinonia.web.tenancy import ACCESS_ATTRIBUTE, ANY_USER, OPERATOR
from tests.conftest import church_user, log_in, register_church
from tests.messaging_fixtures import church_number, new_phone, post_webhook


@pytest.fixture
async def a_resources(client, church_a):
    member = await (
        await client.post(
            "/api/members",
            headers=church_a.headers,
            json={"firstName": "Private", "phone": "+1 617 555 0101"},
        )
    ).get_json()
    group = await (
        await client.post("/api/groups", headers=church_a.headers, json={"name": "A only"})
    ).get_json()
    await client.post(
        f"/api/groups/{group['id']}/members",
        headers=church_a.headers,
        json={"memberIds": [member["id"]]},
    )
    return {"member": member["id"], "group": group["id"]}


CHURCH_A_ROUTES = [
    ("GET", "/api/members/{member}", None),
    ("PATCH", "/api/members/{member}", {"firstName": "Hijack"}),
    ("DELETE", "/api/members/{member}", None),
    ("GET", "/api/groups/{group}", None),
    ("PATCH", "/api/groups/{group}", {"name": "Hijack"}),
    ("DELETE", "/api/groups/{group}", None),
    ("POST", "/api/groups/{group}/members", {"memberIds": ["{member}"]}),
    ("DELETE", "/api/groups/{group}/members", {"memberIds": ["{member}"]}),
]


@pytest.mark.parametrize(("method", "template", "body"), CHURCH_A_ROUTES)
async def test_other_church_gets_404(
    client, church_a, church_b, a_resources, method, template, body
):
    path = template.format(**a_resources)
    if body is not None:
        body = {
            k: [v.format(**a_resources) for v in val] if isinstance(val, list) else val
            for k, val in body.items()
        }
    response = await client.open(path, method=method, headers=church_b.headers, json=body)
    assert response.status_code == 404, (method, path)
    assert (await response.get_json())["error"]["code"] == "not_found"

    # Nothing changed for church A.
    member = await client.get(f"/api/members/{a_resources['member']}", headers=church_a.headers)
    assert (await member.get_json())["firstName"] == "Private"
    group = await (
        await client.get(f"/api/groups/{a_resources['group']}", headers=church_a.headers)
    ).get_json()
    assert group["name"] == "A only" and group["memberCount"] == 1


async def test_cannot_add_other_churchs_member_to_own_group(client, church_b, a_resources):
    own_group = await (
        await client.post("/api/groups", headers=church_b.headers, json={"name": "B group"})
    ).get_json()
    response = await client.post(
        f"/api/groups/{own_group['id']}/members",
        headers=church_b.headers,
        json={"memberIds": [a_resources["member"]]},
    )
    assert response.status_code == 404


async def test_lists_and_summary_only_show_own_church(client, church_b, a_resources):
    members = await (await client.get("/api/members", headers=church_b.headers)).get_json()
    assert members["data"] == [] and members["pagination"]["total"] == 0
    groups = await (await client.get("/api/groups", headers=church_b.headers)).get_json()
    assert groups["data"] == []
    summary = await (
        await client.get("/api/analytics/summary", headers=church_b.headers)
    ).get_json()
    assert summary["members"] == {"total": 0, "optedIn": 0}


async def test_operator_without_church_cannot_use_church_routes(client, operator):
    response = await client.get("/api/members", headers=operator.headers)
    assert response.status_code == 403


# --- exhaustive: every route with a path parameter, from the app's own route map ----------

# Routes with a path parameter that do not address a church's data, and why. Anything else
# with a parameter must be listed in ``PARAM_RESOURCES`` below or this test fails.
NOT_CHURCH_DATA = {
    "/api/admin/locks/<path:name>": "platform operators only (church admins get 403)",
    "/docs/static/<name>": "the docs page's scripts and style sheet, the same for everyone",
}

# Path parameter -> which church-A resource it names.
PARAM_RESOURCES = {
    "member_id": "member",
    "group_id": "group",
    "message_id": "message",
    "conversation_id": "conversation",
    "recurring_id": "recurring",
    "scheduled_id": "scheduled",
    "user_id": "staff_user",
    "invite_id": "invite",
    "number_id": "phone_number",
}

# Valid bodies, so that church B's request passes validation and reaches the tenancy check.
BODIES = {
    ("PATCH", "/api/members/<uuid:member_id>"): {"firstName": "Hijack"},
    ("PATCH", "/api/groups/<uuid:group_id>"): {"name": "Hijack"},
    ("POST", "/api/groups/<uuid:group_id>/members"): {"memberIds": ["{member}"]},
    ("DELETE", "/api/groups/<uuid:group_id>/members"): {"memberIds": ["{member}"]},
    ("POST", "/api/conversations/<uuid:conversation_id>/messages"): {"body": "Hijack"},
    ("PATCH", "/api/recurring-messages/<uuid:recurring_id>"): {"content": "Hijack"},
    ("PATCH", "/api/staff/<uuid:user_id>"): {"role": "owner"},
}

_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _routes_with_ids() -> list[tuple[str, str]]:
    app = create_app(Settings(database_url="postgres://unused/db", redis_url="redis://unused"))
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.arguments or rule.rule in NOT_CHURCH_DATA or rule.websocket:
            continue
        found.extend((method, rule.rule) for method in sorted(rule.methods - {"HEAD", "OPTIONS"}))
    return found


ROUTES_WITH_IDS = _routes_with_ids()


def test_route_map_walk_finds_the_known_id_routes():
    # Guards the walk itself: if it found nothing, the test below would prove nothing.
    assert ("GET", "/api/members/<uuid:member_id>") in ROUTES_WITH_IDS
    assert ("POST", "/api/conversations/<uuid:conversation_id>/messages") in ROUTES_WITH_IDS
    assert len(ROUTES_WITH_IDS) >= 13


@pytest.fixture
async def all_a_resources(client, church_a, a_resources, webhook_settings):
    ids = dict(a_resources)
    message = await client.post(
        "/api/messages",
        headers=church_a.headers,
        json={"content": "A only", "targetType": "members", "targetIds": [ids["member"]]},
    )
    assert message.status_code == 202
    ids["message"] = (await message.get_json())["id"]
    recurring = await client.post(
        "/api/recurring-messages",
        headers=church_a.headers,
        json={
            "content": "A weekly",
            "targetType": "members",
            "targetIds": [ids["member"]],
            "schedule": "0 9 * * 1",
        },
    )
    assert recurring.status_code == 201, await recurring.get_data(as_text=True)
    ids["recurring"] = (await recurring.get_json())["id"]
    scheduled = await client.post(
        "/api/scheduled-messages",
        headers=church_a.headers,
        json={
            "content": "A later",
            "targetType": "members",
            "targetIds": [ids["member"]],
            "sendAt": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
    )
    assert scheduled.status_code == 201, await scheduled.get_data(as_text=True)
    ids["scheduled"] = (await scheduled.get_json())["id"]
    member = await client.get(f"/api/members/{ids['member']}", headers=church_a.headers)
    inbound = {
        "From": (await member.get_json())["phone"],
        "To": await church_number(church_a.church_id),
        "Body": "hello",
        "MessageSid": "SM" + uuid.uuid4().hex,
    }
    assert (await post_webhook(client, "/api/webhooks/sms/inbound", inbound)).status_code == 200
    conversations = await client.get("/api/conversations", headers=church_a.headers)
    ids["conversation"] = (await conversations.get_json())["data"][0]["id"]
    invite = await client.post(
        "/api/staff/invites",
        headers=church_a.headers,
        json={"email": f"a-{uuid.uuid4().hex[:8]}@example.org", "role": "staff"},
    )
    assert invite.status_code == 201, await invite.get_data(as_text=True)
    ids["invite"] = (await invite.get_json())["id"]
    ids["staff_user"] = (await church_user(client.app, church_a.church_id, "staff")).user_id
    number = await client.post(
        "/api/phone-numbers", headers=church_a.headers, json={"number": new_phone()}
    )
    assert number.status_code == 201, await number.get_data(as_text=True)
    ids["phone_number"] = (await number.get_json())["id"]
    return ids


async def _church_a_staff_view(client, church_a) -> dict[str, object]:
    """What church A's owner sees of its staff, invites and numbers (no GET by id there)."""
    return {
        path: await (await client.get(path, headers=church_a.headers)).get_json()
        for path in ("/api/staff", "/api/staff/invites", "/api/phone-numbers")
    }


async def _church_a_view(client, church_a, ids) -> dict[str, object]:
    """Everything church A can read about its resources, to compare before and after."""
    view = {}
    for method, rule in ROUTES_WITH_IDS:
        if method == "GET":
            path = _PARAM.sub(lambda m: ids[PARAM_RESOURCES[m.group(1)]], rule)
            response = await client.get(path, headers=church_a.headers)
            view[path] = (response.status_code, await response.get_json())
    return view


@pytest.mark.parametrize(("method", "rule"), ROUTES_WITH_IDS)
async def test_other_church_gets_404_on_every_id_route(
    client, church_a, church_b, all_a_resources, method, rule
):
    unknown = set(_PARAM.findall(rule)) - set(PARAM_RESOURCES)
    assert not unknown, f"{rule}: add its parameter to PARAM_RESOURCES (or NOT_CHURCH_DATA)"
    ids = all_a_resources
    path = _PARAM.sub(lambda m: ids[PARAM_RESOURCES[m.group(1)]], rule)
    body = BODIES.get((method, rule))
    if body is not None:
        body = json.loads(json.dumps(body).replace("{member}", ids["member"]))
    before = await _church_a_view(client, church_a, ids)
    staff_before = await _church_a_staff_view(client, church_a)

    response = await client.open(path, method=method, headers=church_b.headers, json=body)

    assert response.status_code == 404, (method, path, await response.get_data(as_text=True))
    assert (await response.get_json())["error"]["code"] == "not_found"
    assert await _church_a_view(client, church_a, ids) == before
    assert await _church_a_staff_view(client, church_a) == staff_before


# --- every route x every role, from the one permission table ---------------------------------

# Routes that no role decorator guards, and why. Every other HTTP route must name what it
# requires (tenancy.require_permission / require_user / require_operator) or this fails.
UNGUARDED = {
    "/openapi.json": "the API document",
    "/docs": "the API document's page",
    "/docs/static/<name>": "the docs page's scripts and style sheet",
    "/metrics": "Prometheus scrape, kept off the public site by NGINX",
    "/health": "health checks",
    "/health/detailed": "health checks",
    "/health/ready": "health checks",
    "/health/live": "health checks",
    "/api/auth/register": "creates a church and its owner: no session yet",
    "/api/auth/login": "no session yet",
    "/api/auth/invites/accept": "the invite's token is the credential: no session yet",
    "/api/webhooks/sms/inbound": "Twilio, authenticated by its signature",
    "/api/webhooks/sms/status": "Twilio, authenticated by its signature",
}


def _guarded_routes() -> list[tuple[str, str, str]]:
    app = create_app(Settings(database_url="postgres://unused/db", redis_url="redis://unused"))
    found = []
    for rule in app.url_map.iter_rules():
        if rule.websocket or rule.rule in UNGUARDED:
            continue
        access = getattr(app.view_functions[rule.endpoint], ACCESS_ATTRIBUTE, None)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule, access))
    return found


GUARDED_ROUTES = _guarded_routes()


def _allowed(role: Role, access: str) -> bool:
    if access == ANY_USER:
        return True
    if access == OPERATOR:
        return False  # no church role is a platform operator
    return Permission(access) in ROLE_PERMISSIONS[role]


def test_every_route_is_guarded_or_listed_as_public():
    unguarded = [f"{method} {rule}" for method, rule, access in GUARDED_ROUTES if access is None]
    assert unguarded == [], f"routes without a permission (or listed in UNGUARDED): {unguarded}"
    # The walk below sees every permission of the table on some route.
    used = {access for _, _, access in GUARDED_ROUTES}
    assert {str(p) for p in Permission} <= used


def test_the_table_grants_each_role_less_than_the_one_above():
    owner, admin, staff = (ROLE_PERMISSIONS[r] for r in (Role.OWNER, Role.ADMIN, Role.STAFF))
    assert staff < admin < owner
    assert Permission.MANAGE_NUMBERS not in admin and Permission.MANAGE_OWNERS not in admin
    assert Permission.MANAGE_MEMBERS not in staff and Permission.SEE_ANALYTICS not in staff
    assert Permission.MANAGE_SETTINGS in admin and Permission.MANAGE_SETTINGS not in staff


@pytest.fixture(scope="module")
async def role_users(app):
    """One church with a logged-in user of each role."""
    owner = await register_church(app.test_client(), "Roles Church")
    users = {Role.OWNER: owner}
    for role in (Role.ADMIN, Role.STAFF):
        users[role] = await church_user(app, owner.church_id, str(role))
    return users


@pytest.mark.parametrize("role", list(Role), ids=str)
@pytest.mark.parametrize(("method", "rule", "access"), GUARDED_ROUTES)
async def test_every_role_is_allowed_exactly_what_the_table_grants(
    app, role_users, role, method, rule, access
):
    user = role_users[role]
    if access == ANY_USER:  # logout or a password change would end the shared session
        user = await log_in(app, user.email, user.password)
    # Random ids: an allowed call then answers 404 (or 422 for a missing body) and changes
    # nothing; the permission is checked before either.
    path = _PARAM.sub(lambda m: "some-lock" if "path:" in m.group(0) else str(uuid.uuid4()), rule)

    response = await app.test_client().open(path, method=method, headers=user.headers)

    body = await response.get_json()
    if _allowed(role, access):
        assert response.status_code not in (401, 403), (role, method, path, body)
    else:
        assert response.status_code == 403, (role, method, path, body)
        assert body["error"]["code"] == "forbidden"
