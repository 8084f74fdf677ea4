"""/api/ws: authenticated live events of the user's church, through Redis pub/sub."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from quart.testing import WebsocketResponseError

from koinonia.stores import events
from tests.messaging_fixtures import church_number, create_member, post_webhook, text_member


async def _next_event(ws, wait: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.receive(), wait))


async def test_inbound_text_is_pushed_to_the_churchs_sockets_only(
    app, client, church_a, church_b, webhook_settings, redis
):
    line = await church_number(church_a.church_id)
    member = await create_member(client, church_a.headers)
    client_a, client_b = app.test_client(), app.test_client()

    async with (
        client_a.websocket("/api/ws", headers=church_a.headers) as ws_a,
        client_b.websocket("/api/ws", headers=church_b.headers) as ws_b,
    ):
        assert await _next_event(ws_a) == {"type": "ready", "churchId": church_a.church_id}
        assert await _next_event(ws_b) == {"type": "ready", "churchId": church_b.church_id}

        form = {
            "From": member["phone"],
            "To": line,
            "Body": "Hello!",
            "MessageSid": "SM1" + uuid.uuid4().hex,
        }
        assert (await post_webhook(client, "/api/webhooks/sms/inbound", form)).status_code == 200

        event = await _next_event(ws_a)
        assert event["type"] == "conversation.message"
        assert event["memberId"] == member["id"]
        assert event["message"]["body"] == "Hello!"
        assert event["message"]["direction"] == "inbound"

        # Church B's socket got nothing of A's: the next thing it sees is its own event.
        await events.publish(redis, church_b.church_id, {"type": "delivery.status", "marker": 1})
        assert await _next_event(ws_b) == {"type": "delivery.status", "marker": 1}


async def test_events_published_elsewhere_reach_the_socket(app, church_a, redis):
    # Any server (or a worker) publishing on Redis reaches this app's sockets.
    async with app.test_client().websocket("/api/ws", headers=church_a.headers) as ws:
        await _next_event(ws)
        await events.publish(
            redis, church_a.church_id, {"type": "delivery.status", "status": "delivered"}
        )
        assert await _next_event(ws) == {"type": "delivery.status", "status": "delivered"}


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer not-a-session"}], ids=["none", "bad-token"]
)
async def test_unauthenticated_socket_is_refused(app, headers):
    with pytest.raises(WebsocketResponseError) as refused:
        async with app.test_client().websocket("/api/ws", headers=headers) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 401


async def test_operator_without_church_is_refused(app, operator):
    with pytest.raises(WebsocketResponseError) as refused:
        async with app.test_client().websocket("/api/ws", headers=operator.headers) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 403


async def test_delivery_status_changes_are_pushed(app, client, church_a, make_worker):
    step = await make_worker()
    member = await create_member(client, church_a.headers)
    async with app.test_client().websocket("/api/ws", headers=church_a.headers) as ws:
        await _next_event(ws)
        message_id = await text_member(client, church_a.headers, member["id"], "hi")
        assert await step.run_next()  # the worker (any server) publishes on Redis

        event = await _next_event(ws)  # one event for the job's whole chunk
        assert event["type"] == "deliveries.status"
        [delivery] = event["deliveries"]
        assert delivery["messageId"] == message_id
        assert delivery["memberId"] == member["id"]
        assert delivery["status"] == "sent"


async def test_second_churchs_admin_receives_none_of_the_first_churchs_events(
    app, client, church_a, church_b, make_worker, redis
):
    step = await make_worker()
    member = await create_member(client, church_a.headers)
    async with (
        app.test_client().websocket("/api/ws", headers=church_a.headers) as ws_a,
        app.test_client().websocket("/api/ws", headers=church_b.headers) as ws_b,
    ):
        await _next_event(ws_a)
        await _next_event(ws_b)
        # A real delivery status change of church A, and anything else published for A.
        created = await client.post(
            "/api/messages",
            json={"content": "A only", "targetType": "members", "targetIds": [member["id"]]},
            headers=church_a.headers,
        )
        assert created.status_code == 202
        assert await step.run_next()
        assert (await _next_event(ws_a))["type"] == "deliveries.status"
        await events.publish(redis, church_a.church_id, {"type": "conversation.message"})
        assert (await _next_event(ws_a))["type"] == "conversation.message"

        # B's socket saw none of it: the first thing it receives is B's own marker.
        await events.publish(redis, church_b.church_id, {"type": "marker", "for": "b"})
        assert await _next_event(ws_b) == {"type": "marker", "for": "b"}
