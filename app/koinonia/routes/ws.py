"""``/api/ws``: live events of the user's church (inbound texts, delivery status changes).

Events come through Redis pub/sub (``stores.events``), so a socket receives them whichever
app server it landed on. The socket is closed (code 4401) when its session is revoked: at
once through the revocation channel (``stores.session_cache``), and in any case at the
next check against Redis, every ``session_cache_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from quart import Blueprint, Response, websocket
from redis.asyncio import Redis
from redis.exceptions import RedisError

from koinonia.errors import ApiError, Forbidden, error_response
from koinonia.stores import sessions
from koinonia.web import resources
from koinonia.web.state import get_state
from koinonia.web.tenancy import authenticate_websocket

bp = Blueprint("ws", __name__)

# Close code for a socket whose session was revoked (logout, password change): 4000-4999
# are the application's own (RFC 6455 7.4.2); 4401 reads as "log in again".
SESSION_REVOKED_CLOSE_CODE = 4401


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

    state = get_state()
    redis = state.require_redis()
    session_id = user.session.session_id
    # Checked again at least this often, in case a revocation's message was missed.
    recheck = state.settings.session_cache_seconds or 5.0
    listener = state.revocations
    watch = listener.watch(session_id) if listener is not None else contextlib.nullcontext(None)
    with watch as revoked:
        async with hub.subscribe(user.church_id) as events:
            await websocket.accept()
            await websocket.send(_text({"type": "ready", "churchId": str(user.church_id)}))
            sender = asyncio.create_task(_forward(events))
            try:
                while not sender.done():
                    if revoked is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(revoked.wait(), recheck)
                        revoked.clear()
                    else:
                        await asyncio.sleep(recheck)
                    if not await _still_valid(redis, session_id):
                        await websocket.close(SESSION_REVOKED_CLOSE_CODE, "session revoked")
                        return None
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
    return None


async def _forward(events: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        await websocket.send(_text(await events.get()))


def _text(event: dict[str, Any]) -> str:
    # A text frame, as browsers expect JSON (orjson gives bytes: a binary frame).
    return orjson.dumps(event).decode()


async def _still_valid(redis: Redis, session_id: str) -> bool:
    try:
        return await sessions.read_session(redis, session_id) is not None
    except RedisError:
        # Without Redis no event reaches the socket either; it is checked again next time.
        return True
