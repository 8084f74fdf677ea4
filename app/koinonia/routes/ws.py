"""``/api/ws``: live events of the user's church (inbound texts, delivery status changes).

Events come through Redis pub/sub (``services.events``), so a socket receives them whichever
app server it landed on.
"""

from __future__ import annotations

import json

from quart import Blueprint, Response, websocket
from redis.exceptions import RedisError

from koinonia.errors import ApiError, Forbidden, error_response
from koinonia.services import resources
from koinonia.services.tenancy import authenticate_websocket

bp = Blueprint("ws", __name__)


@bp.websocket("/api/ws")
async def events_socket() -> Response | None:
    try:
        user = await authenticate_websocket()
        if user.church_id is None:
            raise Forbidden("This account does not belong to a church")
    except ApiError as error:
        # Refuse the upgrade with the usual JSON error (HTTP 401/403), before accepting.
        return error_response(error.status, error.code, error.message, error.details)

    hub = resources.event_hub()
    try:
        await hub.start()
    except (TimeoutError, RedisError, OSError):
        # Live events come only through Redis: without it, say so instead of a 500.
        return error_response(503, "service_unavailable", "Live events unavailable")

    async with hub.subscribe(user.church_id) as events:
        await websocket.accept()
        await websocket.send(json.dumps({"type": "ready", "churchId": str(user.church_id)}))
        while True:
            event = await events.get()
            await websocket.send(json.dumps(event))
