"""Groups and group membership."""

from __future__ import annotations

import uuid


async def _member(client, owner, n: int) -> str:
    response = await client.post(
        "/api/members",
        headers=owner.headers,
        json={"firstName": f"G{n}", "phone": f"+1 303 555 {n:04d}"},
    )
    assert response.status_code == 201
    return (await response.get_json())["id"]


async def _group(client, owner, name: str = "Choir") -> dict:
    response = await client.post(
        "/api/groups", headers=owner.headers, json={"name": name, "description": "Sings"}
    )
    assert response.status_code == 201
    return await response.get_json()


async def test_group_crud(client, church_a):
    group = await _group(client, church_a)
    assert group["memberCount"] == 0
    url = f"/api/groups/{group['id']}"

    listed = await (await client.get("/api/groups", headers=church_a.headers)).get_json()
    assert [g["name"] for g in listed["data"]] == ["Choir"]

    patched = await client.patch(url, headers=church_a.headers, json={"name": "Youth Choir"})
    assert (await patched.get_json())["name"] == "Youth Choir"

    assert (await client.delete(url, headers=church_a.headers)).status_code == 204
    assert (await client.get(url, headers=church_a.headers)).status_code == 404


async def test_duplicate_name_409_and_validation_422(client, church_a):
    await _group(client, church_a, "Elders")
    dup = await client.post("/api/groups", headers=church_a.headers, json={"name": "Elders"})
    assert dup.status_code == 409
    empty = await client.post("/api/groups", headers=church_a.headers, json={"name": ""})
    assert empty.status_code == 422


async def test_add_and_remove_members(client, church_a):
    group = await _group(client, church_a)
    m1, m2 = await _member(client, church_a, 1), await _member(client, church_a, 2)
    url = f"/api/groups/{group['id']}/members"

    added = await client.post(url, headers=church_a.headers, json={"memberIds": [m1, m2]})
    assert (await added.get_json()) == {"added": 2}
    again = await client.post(url, headers=church_a.headers, json={"memberIds": [m1]})
    assert (await again.get_json()) == {"added": 0}  # idempotent

    detail = await (
        await client.get(f"/api/groups/{group['id']}", headers=church_a.headers)
    ).get_json()
    assert detail["memberCount"] == 2
    assert {m["id"] for m in detail["members"]} == {m1, m2}

    removed = await client.delete(url, headers=church_a.headers, json={"memberIds": [m1]})
    assert (await removed.get_json()) == {"removed": 1}
    listed = await (await client.get("/api/groups", headers=church_a.headers)).get_json()
    assert listed["data"][0]["memberCount"] == 1


async def test_add_unknown_member_is_404_and_adds_nothing(client, church_a):
    group = await _group(client, church_a)
    m1 = await _member(client, church_a, 3)
    ghost = str(uuid.uuid4())
    response = await client.post(
        f"/api/groups/{group['id']}/members",
        headers=church_a.headers,
        json={"memberIds": [m1, ghost]},
    )
    assert response.status_code == 404
    assert (await response.get_json())["error"]["details"] == {"memberIds": [ghost]}
    detail = await (
        await client.get(f"/api/groups/{group['id']}", headers=church_a.headers)
    ).get_json()
    assert detail["memberCount"] == 0


async def test_member_ids_must_be_uuids(client, church_a):
    group = await _group(client, church_a)
    response = await client.post(
        f"/api/groups/{group['id']}/members",
        headers=church_a.headers,
        json={"memberIds": ["nope"]},
    )
    assert response.status_code == 422
