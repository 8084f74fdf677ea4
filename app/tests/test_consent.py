"""SMS consent: the carriers' keywords, HELP's answer, the consent history, and an opted-out
member never texted (at record time and again at send time)."""

from __future__ import annotations

import uuid

import pytest

from koinonia.delivery.sms import LogProvider
from koinonia.delivery.store import OPTED_OUT_ERROR
from koinonia.models.core import Member
from koinonia.models.messaging import (
    ConversationMessage,
    Delivery,
    DeliveryStatus,
    Message,
    UnroutedInboundSms,
)
from koinonia.services.consent import DEFAULT_HELP_TEXT
from tests.messaging_fixtures import (
    church_number,
    create_group,
    create_member,
    new_phone,
    post_webhook,
    text_member,
)

INBOUND = "/api/webhooks/sms/inbound"


def _sid() -> str:
    return "SM" + uuid.uuid4().hex


@pytest.fixture
async def line(church_a, webhook_settings) -> str:
    return await church_number(church_a.church_id)


async def _text(client, member_phone: str, line: str, body: str) -> tuple[str, str]:
    form = {"From": member_phone, "To": line, "Body": body, "MessageSid": _sid()}
    response = await post_webhook(client, INBOUND, form)
    assert response.status_code == 200
    return form["MessageSid"], await response.get_data(as_text=True)


async def _history(client, headers, member_id: str) -> list[dict]:
    response = await client.get(f"/api/members/{member_id}/consent", headers=headers)
    assert response.status_code == 200, await response.get_data(as_text=True)
    return (await response.get_json())["data"]


@pytest.mark.parametrize(
    "body", ["STOP", "stopall", " Unsubscribe ", "cancel\n", "End", "\tQUIT ", "s t o p"]
)
async def test_every_stop_keyword_opts_the_member_out_and_is_kept(client, church_a, line, body):
    member = await create_member(client, church_a.headers)

    sid, answer = await _text(client, member["phone"], line, body)

    assert (await Member.get(id=member["id"])).opt_in_sms is False
    assert "<Message>" not in answer  # the provider confirms an opt-out itself
    last = (await _history(client, church_a.headers, member["id"]))[-1]
    keyword = "".join(body.split()).upper()
    assert last == {
        **last,
        "optedIn": False,
        "source": "keyword",
        "keyword": keyword,
        "reference": sid,
        "changedBy": None,
    }


@pytest.mark.parametrize("body", ["START", " yes", "Unstop\n"])
async def test_every_start_keyword_opts_the_member_back_in(client, church_a, line, body):
    member = await create_member(client, church_a.headers, opt_in=False)

    await _text(client, member["phone"], line, body)

    assert (await Member.get(id=member["id"])).opt_in_sms is True
    last = (await _history(client, church_a.headers, member["id"]))[-1]
    assert (last["optedIn"], last["source"]) == (True, "keyword")


async def test_a_keyword_inside_a_sentence_is_just_a_text(client, church_a, line):
    member = await create_member(client, church_a.headers)

    sid, _ = await _text(client, member["phone"], line, "Please stop by after service")

    assert (await Member.get(id=member["id"])).opt_in_sms is True
    assert await ConversationMessage.exists(provider_message_id=sid)
    assert len(await _history(client, church_a.headers, member["id"])) == 1  # creation only


async def test_a_second_stop_keeps_no_second_change(client, church_a, line):
    member = await create_member(client, church_a.headers)
    await _text(client, member["phone"], line, "STOP")
    await _text(client, member["phone"], line, "QUIT")
    assert [e["optedIn"] for e in await _history(client, church_a.headers, member["id"])] == [
        True,
        False,
    ]


@pytest.mark.parametrize("body", ["HELP", " info "])
async def test_help_and_info_are_answered_with_the_churchs_help_text(client, church_a, line, body):
    member = await create_member(client, church_a.headers)

    _, answer = await _text(client, member["phone"], line, body)

    expected = DEFAULT_HELP_TEXT.format(church="Church A").replace("&", "&amp;")
    assert f"<Response><Message>{expected}</Message></Response>" in answer
    assert (await Member.get(id=member["id"])).opt_in_sms is True


async def test_help_text_is_the_churchs_own_once_set_and_answers_non_members(
    client, church_a, line
):
    settings = await client.patch(
        "/api/church/settings",
        json={"smsHelpText": "Grace <Chapel> & friends: call 555-0100"},
        headers=church_a.headers,
    )
    assert settings.status_code == 200
    assert (await settings.get_json())["effectiveSmsHelpText"].startswith("Grace <Chapel>")

    _, answer = await _text(client, "+14155550177", line, "HELP")  # not a member

    assert "<Message>Grace &lt;Chapel&gt; &amp; friends: call 555-0100</Message>" in answer


async def test_church_settings_refuse_an_unknown_time_zone_and_a_long_help_text(client, church_a):
    zone = await client.patch(
        "/api/church/settings", json={"timezone": "Mars/Olympus"}, headers=church_a.headers
    )
    assert zone.status_code == 422
    assert "IANA time zone" in (await zone.get_json())["error"]["details"][0]["message"]
    path = await client.patch(
        "/api/church/settings", json={"timezone": "localtime"}, headers=church_a.headers
    )
    assert path.status_code == 422
    long = await client.patch(
        "/api/church/settings", json={"smsHelpText": "x" * 321}, headers=church_a.headers
    )
    assert long.status_code == 422
    current = await (await client.get("/api/church/settings", headers=church_a.headers)).get_json()
    assert current["timezone"] == "UTC" and current["smsHelpText"] is None


async def test_staff_changes_are_kept_with_the_user_who_made_them(client, church_a, line):
    member = await create_member(client, church_a.headers)
    patched = await client.patch(
        f"/api/members/{member['id']}", json={"optInSms": False}, headers=church_a.headers
    )
    assert patched.status_code == 200 and (await patched.get_json())["optInSms"] is False
    # A PATCH that leaves the opt-in as it is keeps no change.
    await client.patch(
        f"/api/members/{member['id']}",
        json={"optInSms": False, "lastName": "Renamed"},
        headers=church_a.headers,
    )
    await _text(client, member["phone"], line, "START")

    history = await _history(client, church_a.headers, member["id"])

    assert [(e["optedIn"], e["source"], e["changedBy"]) for e in history] == [
        (True, "staff", church_a.user_id),
        (False, "staff", church_a.user_id),
        (True, "keyword", None),
    ]


async def test_consent_history_of_another_churchs_member_is_not_found(client, church_a, church_b):
    member = await create_member(client, church_a.headers)
    response = await client.get(f"/api/members/{member['id']}/consent", headers=church_b.headers)
    assert response.status_code == 404


async def test_an_opted_out_member_gets_no_delivery_when_the_message_is_recorded(
    client, church_a, line, make_worker, redis
):
    worker = await make_worker()
    stays = await create_member(client, church_a.headers)
    leaves = await create_member(client, church_a.headers)
    group = await create_group(client, church_a.headers, [stays["id"], leaves["id"]])
    await _text(client, leaves["phone"], line, "STOP")

    response = await client.post(
        "/api/messages",
        json={"content": "Picnic Sunday", "targetType": "group", "targetIds": [group["id"]]},
        headers=church_a.headers,
    )

    body = await response.get_json()
    assert body["recipientCount"] == 1
    assert await Delivery.filter(message_id=body["id"]).values_list("member_id", flat=True) == [
        uuid.UUID(stays["id"])
    ]
    before = len(await LogProvider(redis).sent())
    await worker.run_until_idle()
    assert [s["to"] for s in (await LogProvider(redis).sent())[before:]] == [stays["phone"]]


async def test_a_member_who_opts_out_between_record_and_send_is_not_texted(
    client, church_a, line, make_worker, redis
):
    worker = await make_worker()
    member = await create_member(client, church_a.headers)
    message_id = await text_member(client, church_a.headers, member["id"], "Choir at 7")
    [delivery] = await Delivery.filter(message_id=message_id)
    assert delivery.status == DeliveryStatus.QUEUED  # recorded, its job waiting in the queue

    # The job is paused in the queue (the worker is stepped): the member texts STOP now.
    await _text(client, member["phone"], line, "STOP")
    sent_before = len(await LogProvider(redis).sent())
    assert await worker.run_until_idle() == 1

    assert len(await LogProvider(redis).sent()) == sent_before
    assert await LogProvider(redis).calls(f"delivery-{delivery.id}") == 0
    stored = await Delivery.get(id=delivery.id)
    assert (stored.status, stored.last_error) == (DeliveryStatus.FAILED, OPTED_OUT_ERROR)
    assert (await Message.get(id=message_id)).status == "failed"


async def test_stop_and_start_refresh_the_cached_member_list_and_analytics(client, church_a, line):
    member = await create_member(client, church_a.headers)

    async def views() -> tuple[bool, int]:
        listing = await (await client.get("/api/members", headers=church_a.headers)).get_json()
        summary = await (
            await client.get("/api/analytics/summary", headers=church_a.headers)
        ).get_json()
        [row] = [m for m in listing["data"] if m["id"] == member["id"]]
        return row["optInSms"], summary["members"]["optedIn"]

    opted_in, count = await views()
    assert opted_in is True
    assert (await client.get("/api/members", headers=church_a.headers)).headers["X-Cache"] == "HIT"

    await _text(client, member["phone"], line, "unsubscribe")
    assert await views() == (False, count - 1)
    await _text(client, member["phone"], line, "UNSTOP")
    assert await views() == (True, count)


async def test_a_stop_opts_out_only_the_member_of_the_church_owning_the_number(
    client, church_a, church_b, line
):
    in_a = await create_member(client, church_a.headers)
    same_phone = {"firstName": "Mary", "phone": in_a["phone"]}
    in_b = await (
        await client.post("/api/members", headers=church_b.headers, json=same_phone)
    ).get_json()

    await _text(client, in_a["phone"], await church_number(church_b.church_id), "STOP")

    assert (await Member.get(id=in_b["id"])).opt_in_sms is False
    assert (await Member.get(id=in_a["id"])).opt_in_sms is True
    assert [e["source"] for e in await _history(client, church_b.headers, in_b["id"])] == [
        "staff",
        "keyword",
    ]
    assert [e["source"] for e in await _history(client, church_a.headers, in_a["id"])] == ["staff"]


@pytest.mark.parametrize("body", ["STOP", "HELP"])
async def test_a_keyword_to_a_number_no_church_has_is_kept_for_operators_and_changes_nobody(
    client, church_a, line, body
):
    member = await create_member(client, church_a.headers)

    sid, answer = await _text(client, member["phone"], new_phone(), body)

    assert "<Response></Response>" in answer  # no church to answer HELP for
    kept = await UnroutedInboundSms.get(provider_message_id=sid)
    assert (kept.from_number, kept.body) == (member["phone"], body)
    assert (await Member.get(id=member["id"])).opt_in_sms is True
    assert [e["source"] for e in await _history(client, church_a.headers, member["id"])] == [
        "staff"
    ]
