"""Provider webhooks: signature checks, inbound texts, STOP/START, status callbacks."""

from __future__ import annotations

import uuid

import pytest

from koinonia.delivery.sms import compute_signature
from koinonia.models.core import Member
from koinonia.models.messaging import ConversationMessage, Delivery, DeliveryStatus
from koinonia.stores import replay_claims
from tests.messaging_fixtures import (
    AUTH_TOKEN,
    PUBLIC_BASE_URL,
    church_number,
    create_member,
    post_webhook,
    text_member,
)

INBOUND = "/api/webhooks/sms/inbound"
STATUS = "/api/webhooks/sms/status"


def _sid() -> str:
    return "SM" + uuid.uuid4().hex


@pytest.fixture
async def line(church_a, webhook_settings) -> str:
    return await church_number(church_a.church_id)


async def test_inbound_text_lands_in_the_members_conversation(client, church_a, line):
    member = await create_member(client, church_a.headers)
    form = {"From": member["phone"], "To": line, "Body": "Can I join choir?", "MessageSid": _sid()}

    response = await post_webhook(client, INBOUND, form)

    assert response.status_code == 200
    assert response.content_type.startswith("text/xml")
    assert "<Response></Response>" in await response.get_data(as_text=True)
    listing = await (await client.get("/api/conversations", headers=church_a.headers)).get_json()
    [conversation] = listing["data"]
    assert conversation["member"]["id"] == member["id"]
    messages = await (
        await client.get(
            f"/api/conversations/{conversation['id']}/messages", headers=church_a.headers
        )
    ).get_json()
    assert [(m["direction"], m["body"]) for m in messages["data"]] == [
        ("inbound", "Can I join choir?")
    ]

    # Twilio redelivers a webhook it got no answer to: the same MessageSid is recorded once.
    assert (await post_webhook(client, INBOUND, form)).status_code == 200
    assert await ConversationMessage.filter(provider_message_id=form["MessageSid"]).count() == 1


async def test_stop_and_start_keywords_change_opt_in(client, church_a, line):
    member = await create_member(client, church_a.headers)

    async def text(body: str) -> None:
        form = {"From": member["phone"], "To": line, "Body": body, "MessageSid": _sid()}
        assert (await post_webhook(client, INBOUND, form)).status_code == 200

    await text(" stop ")
    assert (await Member.get(id=member["id"])).opt_in_sms is False
    # Opted-out members are not texted any more.
    response = await client.post(
        "/api/messages",
        json={"content": "hi", "targetType": "members", "targetIds": [member["id"]]},
        headers=church_a.headers,
    )
    assert (await response.get_json())["recipientCount"] == 0
    await text("START")
    assert (await Member.get(id=member["id"])).opt_in_sms is True


@pytest.mark.parametrize(
    "tamper",
    [
        {"sign": False},
        {"signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="},
        {"signed_url": "https://evil.example.org" + INBOUND},
    ],
    ids=["unsigned", "bad-signature", "signed-for-other-url"],
)
@pytest.mark.parametrize("path", [INBOUND, STATUS])
async def test_unsigned_or_badly_signed_requests_are_refused(client, church_a, line, path, tamper):
    member = await create_member(client, church_a.headers)
    form = {
        "From": member["phone"],
        "To": line,
        "Body": "STOP",
        "MessageSid": _sid(),
        "MessageStatus": "delivered",
    }

    response = await post_webhook(client, path, form, **tamper)

    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "invalid_signature"
    assert (await Member.get(id=member["id"])).opt_in_sms is True
    assert not await ConversationMessage.exists(provider_message_id=form["MessageSid"])


async def test_changed_field_breaks_the_signature(client, church_a, line):
    member = await create_member(client, church_a.headers)
    form = {"From": member["phone"], "To": line, "Body": "hello", "MessageSid": _sid()}
    signature = compute_signature(AUTH_TOKEN, PUBLIC_BASE_URL + INBOUND, form)
    response = await post_webhook(client, INBOUND, {**form, "Body": "STOP"}, signature=signature)
    assert response.status_code == 403


async def test_texts_from_strangers_or_to_unknown_numbers_are_dropped(client, church_a, line):
    stranger = {"From": "+14155550123", "To": line, "Body": "hi", "MessageSid": _sid()}
    assert (await post_webhook(client, INBOUND, stranger)).status_code == 200
    member = await create_member(client, church_a.headers)
    nowhere = {"From": member["phone"], "To": "+14155550124", "Body": "hi", "MessageSid": _sid()}
    assert (await post_webhook(client, INBOUND, nowhere)).status_code == 200
    listing = await (await client.get("/api/conversations", headers=church_a.headers)).get_json()
    assert listing["data"] == []


async def test_signed_request_missing_fields_is_400(client, webhook_settings):
    response = await post_webhook(client, INBOUND, {"Body": "hi"})
    assert response.status_code == 400
    assert (await response.get_json())["error"]["details"] == {"missing": ["From", "To"]}


async def test_status_callbacks_move_delivery_status_forward_only(
    client, church_a, make_worker, webhook_settings
):
    worker = await make_worker()
    member = await create_member(client, church_a.headers)
    message_id = await text_member(client, church_a.headers, member["id"], "hi")
    assert await worker.run_next()
    delivery = await Delivery.get(message_id=message_id)
    assert delivery.status == DeliveryStatus.SENT
    # The worker asked the provider to call back with the delivery id in the URL.
    path = f"{STATUS}?deliveryId={delivery.id}"

    def callback(status: str, **extra: str) -> dict[str, str]:
        return {"MessageSid": delivery.provider_message_id, "MessageStatus": status, **extra}

    response = await post_webhook(client, path, callback("delivered"))
    assert response.status_code == 204
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.DELIVERED

    # A late "sent" (callbacks can arrive out of order) does not undo "delivered".
    assert (await post_webhook(client, path, callback("sent"))).status_code == 204
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.DELIVERED
    detail = await (
        await client.get(f"/api/messages/{message_id}", headers=church_a.headers)
    ).get_json()
    assert detail["deliveryCounts"]["delivered"] == 1


async def test_undelivered_callback_marks_failure_found_by_provider_id(
    client, church_a, make_worker, webhook_settings
):
    worker = await make_worker()
    member = await create_member(client, church_a.headers)
    await client.post(
        "/api/messages",
        json={"content": "hi", "targetType": "members", "targetIds": [member["id"]]},
        headers=church_a.headers,
    )
    assert await worker.run_next()
    delivery = await Delivery.get(member_id=member["id"])

    form = {
        "MessageSid": delivery.provider_message_id,
        "MessageStatus": "undelivered",
        "ErrorCode": "30003",
    }
    assert (await post_webhook(client, STATUS, form)).status_code == 204

    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.FAILED
    assert "30003" in stored.last_error


async def test_replayed_stop_is_ignored_and_changes_nothing(client, church_a, line):
    member = await create_member(client, church_a.headers)
    stop = {"From": member["phone"], "To": line, "Body": "STOP", "MessageSid": _sid()}
    start = {"From": member["phone"], "To": line, "Body": "START", "MessageSid": _sid()}
    assert (await post_webhook(client, INBOUND, stop)).status_code == 200
    assert (await post_webhook(client, INBOUND, start)).status_code == 200
    assert (await Member.get(id=member["id"])).opt_in_sms is True

    # An attacker who captured the signed STOP sends it again: acknowledged (as the
    # provider's own redelivery must be), and ignored.
    replay = await post_webhook(client, INBOUND, stop)

    assert replay.status_code == 200
    assert (await Member.get(id=member["id"])).opt_in_sms is True
    assert await ConversationMessage.filter(provider_message_id=stop["MessageSid"]).count() == 1


async def test_replay_after_the_replay_window_still_changes_nothing(client, church_a, line, redis):
    member = await create_member(client, church_a.headers)
    stop = {"From": member["phone"], "To": line, "Body": "STOP", "MessageSid": _sid()}
    start = {"From": member["phone"], "To": line, "Body": "START", "MessageSid": _sid()}
    assert (await post_webhook(client, INBOUND, stop)).status_code == 200
    assert (await post_webhook(client, INBOUND, start)).status_code == 200

    # Once Redis has forgotten the callback, the database still knows its MessageSid: an old
    # STOP does not flip the opt-in the member has set since.
    async for key in redis.scan_iter(match=replay_claims.SEEN_PREFIX + "*"):
        await redis.delete(key)
    assert (await post_webhook(client, INBOUND, stop)).status_code == 200

    assert (await Member.get(id=member["id"])).opt_in_sms is True


async def _sent_delivery(client, church_a, make_worker) -> Delivery:
    worker = await make_worker()
    member = await create_member(client, church_a.headers)
    created = await client.post(
        "/api/messages",
        json={"content": "hi", "targetType": "members", "targetIds": [member["id"]]},
        headers=church_a.headers,
    )
    assert created.status_code == 202, await created.get_data(as_text=True)
    assert await worker.run_next()
    delivery = await Delivery.get(message_id=(await created.get_json())["id"])
    assert delivery.status == DeliveryStatus.SENT
    return delivery


async def test_forged_status_callback_is_refused_and_leaves_the_delivery_unchanged(
    client, church_a, make_worker, webhook_settings
):
    delivery = await _sent_delivery(client, church_a, make_worker)
    form = {"MessageSid": delivery.provider_message_id, "MessageStatus": "undelivered"}
    forged = compute_signature("not-the-auth-token", PUBLIC_BASE_URL + STATUS, form)

    response = await post_webhook(client, STATUS, form, signature=forged)

    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "invalid_signature"
    stored = await Delivery.get(id=delivery.id)
    assert (stored.status, stored.updated_at, stored.last_error) == (
        delivery.status,
        delivery.updated_at,
        delivery.last_error,
    )


async def test_replayed_status_callback_is_not_applied_again(
    client, church_a, make_worker, webhook_settings
):
    delivery = await _sent_delivery(client, church_a, make_worker)
    form = {"MessageSid": delivery.provider_message_id, "MessageStatus": "delivered"}
    assert (await post_webhook(client, STATUS, form)).status_code == 204
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.DELIVERED
    # Put the row back, so that applying the callback again would show.
    await Delivery.filter(id=delivery.id).update(status=DeliveryStatus.SENT)

    replay = await post_webhook(client, STATUS, form)

    assert replay.status_code == 204
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT


async def test_a_failed_handling_releases_the_claim_for_the_providers_retry(redis):
    signature = "sig-" + uuid.uuid4().hex
    with pytest.raises(RuntimeError):
        async with replay_claims.claim_once(redis, signature, 60) as new:
            assert new
            raise RuntimeError("database down")
    async with replay_claims.claim_once(redis, signature, 60) as new:
        assert new  # the retry is handled
    async with replay_claims.claim_once(redis, signature, 60) as new:
        assert not new  # and only once
    assert 0 < await redis.ttl(replay_claims.seen_key(signature)) <= 60
