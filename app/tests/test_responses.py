"""Responses encoded by orjson say exactly what the JSON provider it replaced said."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from quart_schema.extension import create_json_provider

from koinonia.app import create_app


@dataclass
class Point:
    x: int
    y: int


async def test_json_bodies_decode_the_same_as_with_quart_schemas_provider(settings):
    app = create_app(settings)
    value = {
        "when": datetime(2026, 12, 3, 15, 0, tzinfo=UTC),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "name": "Zoë",
        "point": Point(1, 2),
        "nested": [{"b": 1, "a": None}],
    }

    @app.get("/value")
    async def answer():
        return app.json.response(value)

    response = await app.test_client().get("/value")
    assert response.status_code == 200
    body = await response.get_data()
    assert json.loads(body) == json.loads(create_json_provider(app).dumps(value))
    assert "Zoë".encode() in body  # UTF-8, not \u escapes
