"""A church's own numbers: added in E.164, linked at (fake) Twilio, used for its texts, and
inbound texts routed by number; texts to a number no church has are kept for operators."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from koinonia.jobs import phone_link_recovery
from koinonia.models.messaging import Conversation, UnroutedInboundSms
from koinonia.stores.locks import LockService
from tests.messaging_fixtures import (
    ACCOUNT_PATH,
    BASIC_AUTH,
    FROM_NUMBER,
    PUBLIC_BASE_URL,
    create_member,
    new_phone,
    post_webhook,
    text_member,
)

INBOUND_URL = PUBLIC_BASE_URL + "/api/webhooks/sms/inbound"
STATUS_URL = PUBLIC_BASE_URL + "/api/webhooks/sms/status"


async def _add(client, headers, number: str):
    response = await client.post("/api/phone-numbers", headers=headers, json={"number": number})
    return response, await response.get_json()


async def _status(client, headers, number_id: str) -> dict:
    listed = await (await client.get("/api/phone-numbers", headers=headers)).get_json()
    [found] = [n for n in listed["data"] if n["id"] == number_id]
    return found


async def test_added_number_is_linked_at_twilio_with_exactly_the_documented_requests(
    client, church_a, webhook_settings, fake_twilio, twilio_provider, make_worker
):
    step = await make_worker(twilio_provider)
    number = new_phone()
    sid = fake_twilio.own(number)

    response, added = await _add(client, church_a.headers, number)

    assert response.status_code == 201, added
    assert added["status"] == "pending" and added["number"] == number
    assert await step.run_until_idle() == 1
    linked = await _status(client, church_a.headers, added["id"])
    assert linked["status"] == "linked" and linked["attempts"] == 1 and linked["lastError"] is None
    lookup, update = fake_twilio.requests
    assert (lookup.method, lookup.path) == ("GET", f"{ACCOUNT_PATH}/IncomingPhoneNumbers.json")
    assert lookup.form == {"PhoneNumber": [number]}
    assert (update.method, update.path) == (
        "POST",
        f"{ACCOUNT_PATH}/IncomingPhoneNumbers/{sid}.json",
    )
    assert update.form == {
        "SmsUrl": [INBOUND_URL],
        "SmsMethod": ["POST"],
        "StatusCallback": [STATUS_URL],
        "StatusCallbackMethod": ["POST"],
    }
    for request in (lookup, update):
        assert request.headers["authorization"] == BASIC_AUTH
    resource = fake_twilio.number(number)
    assert (resource["sms_url"], resource["status_callback"]) == (INBOUND_URL, STATUS_URL)


async def test_a_failed_link_shows_why_and_the_recovery_cron_links_it_later(
    client, church_a, webhook_settings, fake_twilio, twilio_provider, make_worker, redis: Redis
):
    step = await make_worker(twilio_provider)
    number = new_phone()  # not (yet) a number of the Twilio account

    _, added = await _add(client, church_a.headers, number)
    await step.run_until_idle()

    failed = await _status(client, church_a.headers, added["id"])
    assert (
        failed["status"] == "failed"
        and "not a number of this Twilio account" in failed["lastError"]
    )
    fake_twilio.own(number)  # bought in the console meanwhile
    ctx = {
        **step.worker.context,
        "locks": LockService(redis, prefix=f"test-link-{uuid.uuid4().hex[:8]}:", holder="a:1"),
    }

    outcome = await phone_link_recovery(ctx)

    assert outcome["ran"] and outcome["linked"] >= 1
    relinked = await _status(client, church_a.headers, added["id"])
    assert relinked["status"] == "linked" and relinked["attempts"] == 2
    assert fake_twilio.number(number)["sms_url"] == INBOUND_URL


@pytest.mark.parametrize(
    ("number", "says"),
    [
        ("4155550123", "E.164"),
        ("+1 415 555 0123", "E.164"),
        ("+1415555", "not a valid phone number"),
        ("+999123456", "not a phone number"),
    ],
)
async def test_a_number_not_in_e164_is_refused_saying_how_to_write_it(
    client, church_a, number, says
):
    response, body = await _add(client, church_a.headers, number)

    assert response.status_code == 422
    [detail] = body["error"]["details"]
    assert detail["field"] == "number" and says in detail["message"]


async def test_a_number_another_church_has_is_refused(client, church_a, church_b):
    number = new_phone()
    assert (await _add(client, church_a.headers, number))[0].status_code == 201

    response, body = await _add(client, church_b.headers, number)

    assert response.status_code == 409 and body["error"]["code"] == "number_in_use"


async def test_an_operator_adds_a_number_to_a_church(client, church_a, operator):
    number = new_phone()
    response = await client.post(
        "/api/admin/phone-numbers",
        headers=operator.headers,
        json={"churchId": church_a.church_id, "number": number},
    )
    assert response.status_code == 201
    owned = await (await client.get("/api/phone-numbers", headers=church_a.headers)).get_json()
    assert number in [n["number"] for n in owned["data"]]
    unknown = await client.post(
        "/api/admin/phone-numbers",
        headers=operator.headers,
        json={"churchId": str(uuid.uuid4()), "number": new_phone()},
    )
    assert unknown.status_code == 404


async def test_texts_go_out_from_the_churchs_linked_number_else_the_platforms(
    client, church_a, church_b, webhook_settings, fake_twilio, twilio_provider, make_worker
):
    step = await make_worker(twilio_provider)
    own = new_phone()
    fake_twilio.own(own)
    await _add(client, church_a.headers, own)
    pending_only = new_phone()  # church B's number never links: not used to send
    await _add(client, church_b.headers, pending_only)
    await step.run_until_idle()
    member_a = await create_member(client, church_a.headers)
    member_b = await create_member(client, church_b.headers)

    await text_member(client, church_a.headers, member_a["id"], "from our number")
    await text_member(client, church_b.headers, member_b["id"], "from the platform's")
    await step.run_until_idle()

    [to_a] = fake_twilio.sends_to(member_a["phone"])
    [to_b] = fake_twilio.sends_to(member_b["phone"])
    assert to_a.form["From"] == [own]
    assert to_b.form["From"] == [FROM_NUMBER]


async def test_inbound_texts_reach_the_church_owning_the_number(
    client, church_a, church_b, webhook_settings
):
    _, line = await _add(client, church_b.headers, new_phone())
    member = await create_member(client, church_b.headers)
    form = {
        "From": member["phone"],
        "To": line["number"],
        "Body": "hi B",
        "MessageSid": "SM" + uuid.uuid4().hex,
    }

    assert (await post_webhook(client, "/api/webhooks/sms/inbound", form)).status_code == 200

    assert await Conversation.filter(church_id=church_b.church_id).count() == 1
    assert await Conversation.filter(church_id=church_a.church_id).count() == 0


async def test_a_text_to_a_number_no_church_has_is_acknowledged_and_kept_for_operators(
    client, church_a, operator, webhook_settings
):
    _, removed = await _add(client, church_a.headers, new_phone())
    gone = await client.delete(f"/api/phone-numbers/{removed['id']}", headers=church_a.headers)
    assert gone.status_code == 204
    sids = []
    for to in (new_phone(), removed["number"]):
        sid = "SM" + uuid.uuid4().hex
        sids.append(sid)
        form = {"From": "+14155550199", "To": to, "Body": "anyone there?", "MessageSid": sid}
        response = await post_webhook(client, "/api/webhooks/sms/inbound", form)
        assert response.status_code == 200
        assert response.content_type.startswith("text/xml")
        assert "<Response></Response>" in await response.get_data(as_text=True)

    listed = await client.get("/api/admin/inbound/unrouted", headers=operator.headers)
    recorded = {t["providerMessageId"]: t for t in (await listed.get_json())["data"]}
    assert set(sids) <= set(recorded)
    assert recorded[sids[1]]["to"] == removed["number"]
    assert recorded[sids[1]]["body"] == "anyone there?"
    assert await Conversation.filter(church_id=church_a.church_id).count() == 0
    assert await UnroutedInboundSms.filter(provider_message_id__in=sids).count() == 2
    refused = await client.get("/api/admin/inbound/unrouted", headers=church_a.headers)
    assert refused.status_code == 403
