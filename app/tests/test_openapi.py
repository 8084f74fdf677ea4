"""The OpenAPI document validates and covers every HTTP route the app serves."""

from __future__ import annotations

import json
import re

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import ValidationError

NOT_DOCUMENTED = {"/openapi.json", "/docs", "/docs/static/<name>"}


def _resolved(document: dict, schema: dict) -> dict:
    if "$ref" in schema:
        return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([a-zA-Z_][a-zA-Z0-9_]*)>", r"{\1}", rule)


async def test_document_is_valid_openapi(client):
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    validate(document)
    assert document["info"]["title"] == "Koinonia API"
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["cookieAuth"]["in"] == "cookie"


async def test_document_covers_every_route(app, client):
    document = await (await client.get("/openapi.json")).get_json()
    paths = document["paths"]
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.websocket or rule.rule in NOT_DOCUMENTED:
            continue
        path = _openapi_path(rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if method.lower() not in paths.get(path, {}):
                missing.append(f"{method} {path}")
    # A route hidden with quart_schema.hide (or otherwise left out) shows up here.
    assert missing == [], f"routes missing from /openapi.json: {missing}"


async def test_documented_request_bodies_use_camel_case(client):
    document = await (await client.get("/openapi.json")).get_json()
    body = document["paths"]["/api/members"]["post"]["requestBody"]
    member_in = _resolved(document, body["content"]["application/json"]["schema"])["properties"]
    assert {"firstName", "lastName", "phone", "email", "optInSms"} <= set(member_in)
    operation = document["paths"]["/api/members"]["get"]
    assert operation["security"]


async def test_health_shapes_documented(client):
    document = await (await client.get("/openapi.json")).get_json()
    ready = document["paths"]["/health/ready"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)
    schema = ready["200"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"ready", "timestamp"}


async def test_docs_page_served(client):
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "openapi.json" in await response.get_data(as_text=True)


async def _document(client) -> dict:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return await response.get_json()


def _operations(document: dict):
    for path, path_item in document["paths"].items():
        for method, operation in path_item.items():
            yield path, method, operation


async def test_every_operation_documents_its_success_answer(client):
    document = await _document(client)
    for path, method, operation in _operations(document):
        responses = operation["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert len(success) == 1, f"{method} {path}: {sorted(responses)}"
        answer = responses[success[0]]
        if success[0] == "204":
            assert "content" not in answer, f"{method} {path}"
        else:
            (media,) = answer["content"].values()
            schema = media["schema"]
            assert schema.get("$ref") or schema.get("type"), f"{method} {path}: {schema}"


async def test_every_operation_documents_the_errors_it_can_answer(client):
    document = await _document(client)
    for path, method, operation in _operations(document):
        responses = operation["responses"]
        expected = set()
        if operation.get("security"):
            expected |= {"401", "403"}
        if any(p["in"] == "path" for p in operation["parameters"]):
            expected.add("404")
        body = operation.get("requestBody")
        if body is not None and "application/json" in body["content"]:
            expected |= {"400", "422"}
        if any(p["in"] == "query" for p in operation["parameters"]):
            expected.add("422")
        if path.startswith("/api/"):
            expected |= {"429", "503"}
        missing = expected - set(responses)
        assert not missing, f"{method} {path} lacks {sorted(missing)}"
        for code in {"429", "503"} & set(responses):
            schema = responses[code]["content"]["application/json"]["schema"]
            if schema != {"$ref": "#/components/schemas/ErrorResponse"}:
                continue  # a health report's own 503 (ready: false, unhealthy)
            assert "Retry-After" in responses[code]["headers"], f"{method} {path} {code}"
        if "422" in responses and operation["operationId"] != "post_import_members":
            schema = responses["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ValidationErrorResponse"}


async def test_request_bodies_are_required(client):
    document = await _document(client)
    for path, method, operation in _operations(document):
        if "requestBody" in operation:
            assert operation["requestBody"].get("required") is True, f"{method} {path}"


async def test_validation_errors_are_documented_field_by_field(client):
    schemas = (await _document(client))["components"]["schemas"]
    detail = schemas["ValidationErrorDetail"]["properties"]["details"]
    assert detail["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert set(schemas["FieldError"]["required"]) == {"field", "message", "type"}


async def test_sending_operations_document_queue_full(client):
    document = await _document(client)
    for path in ("/api/messages", "/api/conversations/{conversation_id}/messages"):
        unavailable = document["paths"][path]["post"]["responses"]["503"]
        assert "queue_full" in unavailable["description"]
        assert "Retry-After" in unavailable["headers"]


async def test_sending_operations_document_the_idempotency_key_and_the_replay_header(client):
    document = await _document(client)
    for path in ("/api/messages", "/api/conversations/{conversation_id}/messages"):
        operation = document["paths"][path]["post"]
        [key] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
        assert key["in"] == "header" and not key["required"]
        assert key["schema"]["maxLength"] == 255
        assert operation["responses"]["202"]["headers"]["Idempotent-Replayed"]["schema"] == {
            "type": "string",
            "enum": ["true"],
        }


async def test_cached_reads_document_the_cache_status_their_answers_carry(client, church_a):
    document = await _document(client)
    for path in ("/api/members", "/api/analytics/summary"):
        header = document["paths"][path]["get"]["responses"]["200"]["headers"]["X-Cache"]
        first = await client.get(path, headers=church_a.headers)
        second = await client.get(path, headers=church_a.headers)
        assert first.status_code == second.status_code == 200
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
        assert {"MISS", "HIT"} <= set(header["schema"]["enum"])


async def test_links_lead_to_existing_operations_and_their_parameters(client):
    document = await _document(client)
    operations = {op["operationId"]: op for _, _, op in _operations(document)}
    sources = set()
    for path, method, operation in _operations(document):
        for code, response in operation["responses"].items():
            for name, link in response.get("links", {}).items():
                sources.add(operation["operationId"])
                assert code.startswith("2"), f"{method} {path}: link {name} on {code}"
                target = operations.get(link["operationId"])
                assert target is not None, f"{method} {path}: link to {link['operationId']}"
                path_parameters = {p["name"] for p in target["parameters"] if p["in"] == "path"}
                assert set(link.get("parameters", {})) <= path_parameters, link
                if "requestBody" in link:
                    body = target["requestBody"]["content"]["application/json"]["schema"]
                    properties = _resolved(document, body)["properties"]
                    assert set(link["requestBody"]) <= set(properties), link
    creates = {
        "post_create_member",
        "post_create_group",
        "post_create_message",
        "post_create_recurring",
        "post_create_scheduled",
        "post_add_number",
        "post_create_invite",
    }
    assert creates <= sources


async def test_phone_numbers_are_documented_as_e164(client):
    document = await _document(client)
    number_in = document["paths"]["/api/phone-numbers"]["post"]["requestBody"]["content"]
    schema = _resolved(document, number_in["application/json"]["schema"])
    pattern = schema["properties"]["number"]["pattern"]
    for number in ("+14155550123", "+442071838750"):
        assert re.fullmatch(pattern, number)
    for number in ("14155550123", "+0123", "+1 415 555 0123", "+1234567890123456"):
        assert not re.fullmatch(pattern, number)
    member = document["components"]["schemas"]["MemberOut"]["properties"]["phone"]
    assert member["pattern"] == pattern


AN_ID = "7c0f6f4e-1b7e-4d43-9a59-6f4f4b8f3a10"
TARGETS = [
    ({"targetType": "all"}, True),
    ({"targetType": "all", "targetIds": []}, True),
    ({"targetType": "members"}, False),
    ({"targetType": "members", "targetIds": []}, False),
    ({"targetType": "members", "targetIds": [AN_ID]}, True),
    ({"targetType": "group"}, False),
    ({"targetType": "group", "targetIds": ["not-an-id"]}, False),
    ({"targetType": "group", "targetIds": [AN_ID]}, True),
    ({"targetType": "everyone", "targetIds": [AN_ID]}, False),
]


@pytest.mark.parametrize(("target", "accepted"), TARGETS, ids=[json.dumps(t) for t, _ in TARGETS])
async def test_document_and_api_agree_on_the_target_rule(client, target, accepted):
    """targetIds is required (at least one id) unless targetType is all: the schema in the
    document accepts exactly what the request model accepts."""
    from koinonia.routes.messages import MessageIn

    document = await _document(client)
    schema = document["paths"]["/api/messages"]["post"]["requestBody"]["content"]
    validator = Draft202012Validator(
        {**schema["application/json"]["schema"], "components": document["components"]}
    )
    body = {"content": "Service at ten", **target}
    try:
        MessageIn.model_validate(body)
        by_model = True
    except ValidationError:
        by_model = False
    assert by_model == accepted
    assert validator.is_valid(body) == accepted
