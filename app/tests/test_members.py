"""Members: CRUD, phone normalisation, pagination, errors."""

from __future__ import annotations

import uuid


def _phone(n: int) -> str:
    return f"+1 202 555 {n:04d}"


async def _create(client, owner, n: int, **extra):
    body = {"firstName": f"M{n}", "lastName": "Test", "phone": _phone(n), **extra}
    response = await client.post("/api/members", headers=owner.headers, json=body)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return await response.get_json()


async def test_create_normalises_phone_to_e164(client, church_a):
    response = await client.post(
        "/api/members",
        headers=church_a.headers,
        json={"firstName": "Ann", "phone": "(202) 555-0143", "email": "ann@example.org"},
    )
    assert response.status_code == 201
    member = await response.get_json()
    assert member["phone"] == "+12025550143"
    assert member["optInSms"] is True
    assert member["churchId"] == church_a.church_id
    assert member["createdAt"]


async def test_invalid_phone_is_422(client, church_a):
    response = await client.post(
        "/api/members", headers=church_a.headers, json={"firstName": "Bad", "phone": "12"}
    )
    assert response.status_code == 422
    error = (await response.get_json())["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "phone"


async def test_missing_fields_and_bad_email_are_422(client, church_a):
    response = await client.post(
        "/api/members", headers=church_a.headers, json={"phone": _phone(1), "email": "nope"}
    )
    assert response.status_code == 422
    fields = {d["field"] for d in (await response.get_json())["error"]["details"]}
    assert {"firstName", "email"} <= fields


async def test_duplicate_phone_in_same_church_is_409(client, church_a, church_b):
    await _create(client, church_a, 7)
    again = await client.post(
        "/api/members", headers=church_a.headers, json={"firstName": "X", "phone": _phone(7)}
    )
    assert again.status_code == 409
    # Another church may have the same number.
    await _create(client, church_b, 7)


async def test_get_patch_delete(client, church_a):
    member = await _create(client, church_a, 11)
    url = f"/api/members/{member['id']}"
    got = await client.get(url, headers=church_a.headers)
    assert (await got.get_json())["firstName"] == "M11"

    patched = await client.patch(
        url, headers=church_a.headers, json={"optInSms": False, "phone": "+1 202 555 0199"}
    )
    assert patched.status_code == 200
    body = await patched.get_json()
    assert body["optInSms"] is False and body["phone"] == "+12025550199"
    assert body["firstName"] == "M11"

    bad = await client.patch(url, headers=church_a.headers, json={"phone": "not a phone"})
    assert bad.status_code == 422

    assert (await client.delete(url, headers=church_a.headers)).status_code == 204
    assert (await client.get(url, headers=church_a.headers)).status_code == 404
    assert (await client.delete(url, headers=church_a.headers)).status_code == 404


async def test_unknown_or_malformed_id_is_404(client, church_a):
    assert (
        await client.get(f"/api/members/{uuid.uuid4()}", headers=church_a.headers)
    ).status_code == 404
    assert (await client.get("/api/members/123", headers=church_a.headers)).status_code == 404


async def test_requires_auth(client):
    assert (await client.get("/api/members")).status_code == 401
    assert (await client.post("/api/members", json={})).status_code == 401


async def test_page_and_cursor_pagination(client, church_a):
    created = [await _create(client, church_a, 100 + i) for i in range(5)]
    newest_first = [m["id"] for m in reversed(created)]

    page1 = await (await client.get("/api/members?limit=2", headers=church_a.headers)).get_json()
    assert [m["id"] for m in page1["data"]] == newest_first[:2]
    assert page1["pagination"]["total"] == 5
    page3 = await (
        await client.get("/api/members?limit=2&page=3", headers=church_a.headers)
    ).get_json()
    assert [m["id"] for m in page3["data"]] == newest_first[4:]

    seen: list[str] = []
    cursor = None
    while True:
        url = "/api/members?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = await (await client.get(url, headers=church_a.headers)).get_json()
        seen += [m["id"] for m in body["data"]]
        cursor = body["pagination"]["nextCursor"]
        if cursor is None:
            break
    assert seen == newest_first


async def test_bad_pagination_params_are_422(client, church_a):
    for query in ("limit=0", "limit=1000", "page=0", "limit=abc", "cursor=!!!"):
        response = await client.get(f"/api/members?{query}", headers=church_a.headers)
        assert response.status_code == 422, query
