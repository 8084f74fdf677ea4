"""Tenant isolation: church B sees 404 for every church-A resource id, and lists never leak."""

from __future__ import annotations

import pytest


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
