"""Conversations: listing, replies through the delivery pipeline, isolation."""

from __future__ import annotations

import uuid

import pytest

from koinonia.delivery.sms import LogProvider
from koinonia.web.state import get_state
from tests.messaging_fixtures import (
    church_number,
    create_member,
    post_webhook,
    redis_near_its_memory_limit,
)


@pytest.fixture
async def conversation(client, church_a, webhook_settings) -> dict:
    line = await church_number(church_a.church_id)
    member = await create_member(client, church_a.headers)
    form = {
        "From": member["phone"],
        "To": line,
        "Body": "Is there parking?",
        "MessageSid": "SM" + uuid.uuid4().hex,
    }
    assert (await post_webhook(client, "/api/webhooks/sms/inbound", form)).status_code == 200
    listing = await (await client.get("/api/conversations", headers=church_a.headers)).get_json()
    [found] = [c for c in listing["data"] if c["member"]["id"] == member["id"]]
    return {**found, "line": line}


async def test_reply_is_queued_and_sent_to_the_member(
    client, church_a, conversation, make_worker, redis
):
    worker = await make_worker()
    url = f"/api/conversations/{conversation['id']}/messages"

    response = await client.post(
        url, json={"body": "Yes, behind the hall"}, headers=church_a.headers
    )

    assert response.status_code == 202
    reply = await response.get_json()
    assert reply["direction"] == "outbound" and reply["deliveryId"]
    before = len(await LogProvider(redis).sent())
    assert await worker.run_until_idle() == 1
    [sent] = (await LogProvider(redis).sent())[before:]
    assert sent == {**sent, "to": conversation["member"]["phone"], "body": "Yes, behind the hall"}
    messages = await (await client.get(url, headers=church_a.headers)).get_json()
    assert [(m["direction"], m["body"]) for m in messages["data"]] == [
        ("inbound", "Is there parking?"),
        ("outbound", "Yes, behind the hall"),
    ]


async def test_reply_to_opted_out_member_is_refused(client, church_a, conversation):
    await post_webhook(
        client,
        "/api/webhooks/sms/inbound",
        {
            "From": conversation["member"]["phone"],
            "To": conversation["line"],
            "Body": "STOP",
            "MessageSid": "SM" + uuid.uuid4().hex,
        },
    )
    response = await client.post(
        f"/api/conversations/{conversation['id']}/messages",
        json={"body": "Are you sure?"},
        headers=church_a.headers,
    )
    assert response.status_code == 409
    assert (await response.get_json())["error"]["code"] == "member_opted_out"


async def test_conversations_are_isolated_per_church(client, church_a, church_b, conversation):
    url = f"/api/conversations/{conversation['id']}/messages"
    assert (await client.get(url, headers=church_b.headers)).status_code == 404
    reply = await client.post(url, json={"body": "hi"}, headers=church_b.headers)
    assert reply.status_code == 404
    listing = await (await client.get("/api/conversations", headers=church_b.headers)).get_json()
    assert listing["data"] == []


async def test_reply_validation_and_unknown_conversation(client, church_a, conversation):
    url = f"/api/conversations/{conversation['id']}/messages"
    empty = await client.post(url, json={"body": ""}, headers=church_a.headers)
    assert empty.status_code == 422
    unknown = await client.get(
        f"/api/conversations/{uuid.uuid4()}/messages", headers=church_a.headers
    )
    assert unknown.status_code == 404


# The longest key a client may send is as long as the column it is stored in, beside the
# conversation's scope: it must still be kept, not answered with a 500.
@pytest.mark.parametrize("key_length", [36, 255], ids=["uuid", "longest"])
async def test_reply_retried_with_the_same_idempotency_key_texts_once(
    client, church_a, conversation, make_worker, redis, key_length
):
    worker = await make_worker()
    url = f"/api/conversations/{conversation['id']}/messages"
    key = (str(uuid.uuid4()) * 8)[:key_length]
    headers = {**church_a.headers, "Idempotency-Key": key}

    first = await client.post(url, json={"body": "See you Sunday"}, headers=headers)
    again = await client.post(url, json={"body": "See you Sunday"}, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["id"] == (await first.get_json())["id"]
    delivery_id = (await first.get_json())["deliveryId"]
    assert await worker.run_until_idle() == 1
    assert await LogProvider(redis).calls(f"delivery-{delivery_id}") == 1
    messages = await (await client.get(url, headers=church_a.headers)).get_json()
    assert [m["body"] for m in messages["data"]].count("See you Sunday") == 1


async def test_reply_is_refused_while_the_queue_is_full(app, client, church_a, conversation, redis):
    headroom = get_state(app).queue_headroom
    headroom.interval = 0  # read Redis's memory on every request of this test
    url = f"/api/conversations/{conversation['id']}/messages"
    try:
        async with redis_near_its_memory_limit(redis):
            refused = await client.post(url, json={"body": "while full"}, headers=church_a.headers)
    finally:
        # A fresh reading (Redis unlimited again) before the 1 s cache returns, so the next
        # test's first request does not meet this test's "full" reading.
        await headroom.ratio()
        headroom.interval = 1.0
    assert refused.status_code == 503
    assert (await refused.get_json())["error"]["code"] == "queue_full"
    messages = await (await client.get(url, headers=church_a.headers)).get_json()
    assert "while full" not in [m["body"] for m in messages["data"]]
