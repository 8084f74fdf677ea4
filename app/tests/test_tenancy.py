"""Tenant isolation: church B sees 404 for every church-A resource id, and lists never leak."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from koinonia.app import create_app
from koinonia.settings import Settings
from tests.messaging_fixtures import church_number, post_webhook


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
}

# Path parameter -> which church-A resource it names.
PARAM_RESOURCES = {
    "member_id": "member",
    "group_id": "group",
    "message_id": "message",
    "conversation_id": "conversation",
    "recurring_id": "recurring",
    "scheduled_id": "scheduled",
}

# Valid bodies, so that church B's request passes validation and reaches the tenancy check.
BODIES = {
    ("PATCH", "/api/members/<uuid:member_id>"): {"firstName": "Hijack"},
    ("PATCH", "/api/groups/<uuid:group_id>"): {"name": "Hijack"},
    ("POST", "/api/groups/<uuid:group_id>/members"): {"memberIds": ["{member}"]},
    ("DELETE", "/api/groups/<uuid:group_id>/members"): {"memberIds": ["{member}"]},
    ("POST", "/api/conversations/<uuid:conversation_id>/messages"): {"body": "Hijack"},
    ("PATCH", "/api/recurring-messages/<uuid:recurring_id>"): {"content": "Hijack"},
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
    return ids


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

    response = await client.open(path, method=method, headers=church_b.headers, json=body)

    assert response.status_code == 404, (method, path, await response.get_data(as_text=True))
    assert (await response.get_json())["error"]["code"] == "not_found"
    assert await _church_a_view(client, church_a, ids) == before
