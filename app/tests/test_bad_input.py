"""Bad and hostile request bodies: every one gets the JSON error shape with the right status,
unknown fields are ignored (never stored), and injection-looking text is plain text."""

from __future__ import annotations

import importlib
import json
import pkgutil
import uuid

import pytest

import koinonia.routes
from koinonia.models.core import Member
from koinonia.schemas import ApiModel

HOSTILE_TEXT = [
    "'; DROP TABLE members; --",
    "$(rm -rf /)",
    "`reboot`; echo pwned | sh",
    "Robert'); DELETE FROM groups WHERE ('1'='1",
    "<script>alert(1)</script>",
    "%s%s%s %n {0} ${jndi:ldap://x}",
    "\u202eevil",  # right-to-left override
]


async def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, await response.get_data(as_text=True)
    assert response.content_type == "application/json"
    error = (await response.get_json())["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in await response.get_data(as_text=True)
    return error


async def test_oversized_body_is_413_with_json_error(client, church_a, settings):
    body = b'{"firstName": "' + b"x" * settings.max_body_bytes + b'"}'
    response = await client.post(
        "/api/members",
        data=body,
        headers={**church_a.headers, "Content-Type": "application/json"},
    )
    await _error(response, 413, "payload_too_large")
    assert await Member.filter(church_id=church_a.church_id).count() == 0


@pytest.mark.parametrize(
    "raw", [b"{not json", b'{"firstName": "A",}', b"\xff\xfe\x00", b'{"a": 1'], ids=repr
)
async def test_malformed_json_is_400_with_json_error(client, church_a, raw):
    response = await client.post(
        "/api/members", data=raw, headers={**church_a.headers, "Content-Type": "application/json"}
    )
    await _error(response, 400, "bad_request")


async def test_wrong_types_are_422_naming_each_field(client, church_a):
    response = await client.post(
        "/api/members",
        json={"firstName": 123, "phone": ["+16175550100"], "optInSms": "maybe"},
        headers=church_a.headers,
    )
    error = await _error(response, 422, "validation_error")
    assert {d["field"] for d in error["details"]} >= {"firstName", "phone", "optInSms"}


@pytest.mark.parametrize("body", [[1, 2], "a string", 42, None], ids=repr)
async def test_json_that_is_not_an_object_is_422(client, church_a, body):
    response = await client.post(
        "/api/groups",
        data=json.dumps(body),
        headers={**church_a.headers, "Content-Type": "application/json"},
    )
    await _error(response, 422, "validation_error")


async def test_unknown_fields_are_ignored_and_never_stored(client, church_a, church_b):
    chosen_id = str(uuid.uuid4())
    response = await client.post(
        "/api/members",
        json={
            "firstName": "Ann",
            "phone": "+1 617 555 0142",
            # A client cannot pick these: mass assignment would move data across churches.
            "id": chosen_id,
            "churchId": church_b.church_id,
            "createdAt": "2000-01-01T00:00:00Z",
            "isOperator": True,
            "favouriteHymn": "Amazing Grace",
        },
        headers=church_a.headers,
    )

    assert response.status_code == 201
    member = await response.get_json()
    assert member["id"] != chosen_id
    assert member["churchId"] == church_a.church_id
    assert not member["createdAt"].startswith("2000")
    assert "favouriteHymn" not in member and "isOperator" not in member
    stored = await Member.get(id=member["id"])
    assert str(stored.church_id) == church_a.church_id  # type: ignore[attr-defined]
    listing = await (await client.get("/api/members", headers=church_b.headers)).get_json()
    assert listing["data"] == []


def test_every_request_model_ignores_unknown_fields_the_same_way():
    # One rule for the whole API (clients may send more than we read); a model that forbids
    # or keeps extras would make it inconsistent, and keeping them could reach the database.
    for info in pkgutil.iter_modules(koinonia.routes.__path__):
        importlib.import_module(f"koinonia.routes.{info.name}")
    models = _subclasses(ApiModel)
    assert len(models) > 10
    offenders = {m.__qualname__ for m in models if m.model_config.get("extra") != "ignore"}
    assert offenders == set()


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=range(len(HOSTILE_TEXT)))
async def test_injection_strings_are_stored_and_returned_verbatim(client, church_a, text):
    created = await client.post(
        "/api/members",
        json={"firstName": text, "lastName": text, "phone": "+1 617 555 0177"},
        headers=church_a.headers,
    )
    assert created.status_code == 201, await created.get_data(as_text=True)
    member_id = (await created.get_json())["id"]
    group = await client.post(
        "/api/groups", json={"name": text, "description": text}, headers=church_a.headers
    )
    assert group.status_code == 201

    member = await (
        await client.get(f"/api/members/{member_id}", headers=church_a.headers)
    ).get_json()
    assert (member["firstName"], member["lastName"]) == (text, text)
    group_body = await group.get_json()
    fetched = await (
        await client.get(f"/api/groups/{group_body['id']}", headers=church_a.headers)
    ).get_json()
    assert (fetched["name"], fetched["description"]) == (text, text)
    # The tables are all still there and hold exactly what was sent.
    assert await Member.filter(church_id=church_a.church_id, first_name=text).count() == 1


async def test_nul_character_in_text_is_422_not_a_database_error(client):
    # Valid JSON, but PostgreSQL text cannot hold U+0000.
    body = b'{"email": "a\\u0000b@example.org", "password": "x\\u0000yyyyyyy"}'
    response = await client.post(
        "/api/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    error = await _error(response, 422, "validation_error")
    assert {detail["field"] for detail in error["details"]} == {"email", "password"}


async def test_lone_surrogate_in_json_text_is_422(client):
    body = b'{"email": "a\\ud998b@example.org", "password": "x\\udae0yyyyyyy"}'
    response = await client.post(
        "/api/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    error = await _error(response, 422, "validation_error")
    assert {detail["field"] for detail in error["details"]} == {"email", "password"}
