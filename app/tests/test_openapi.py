"""The OpenAPI document validates and covers every HTTP route the app serves."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

NOT_DOCUMENTED = {"/openapi.json", "/docs", "/docs/static/<name>"}


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
    member_in = body["content"]["application/json"]["schema"]["properties"]
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
