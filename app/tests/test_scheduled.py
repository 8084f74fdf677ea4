"""Scheduled messages: a time in the church's zone, sent once by the cron under its lock,
cancellable until the cron takes it (a cancel racing the send: one or the other)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from koinonia.delivery import send_message
from koinonia.delivery.sms import LogProvider
from koinonia.jobs import scheduled_messages
from koinonia.models.messaging import Message, ScheduledMessage, ScheduledStatus
from koinonia.services import scheduled
from koinonia.stores.locks import LockService
from tests.messaging_fixtures import create_member
from tests.pause import Pause

CHICAGO = ZoneInfo("America/Chicago")


async def _schedule(client, headers, member_id: str, send_at: str, content: str = "Hi"):
    return await client.post(
        "/api/scheduled-messages",
        json={
            "content": content,
            "targetType": "members",
            "targetIds": [member_id],
            "sendAt": send_at,
        },
        headers=headers,
    )


@pytest.fixture
async def due(client, church_a) -> dict:
    """A scheduled message to one member, made due now (as the minute passes)."""
    member = await create_member(client, church_a.headers)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await _schedule(client, church_a.headers, member["id"], later, "Due now")
    assert response.status_code == 201, await response.get_data(as_text=True)
    item = await response.get_json()
    await ScheduledMessage.filter(id=item["id"]).update(
        send_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    return {"id": item["id"], "member": member}


async def _messages_of(scheduled_id: str) -> list[Message]:
    return await Message.filter(idempotency_key=f"scheduled:{scheduled_id}")


async def test_a_local_time_is_read_in_the_churchs_time_zone(client, church_a):
    zone = await client.patch(
        "/api/church/settings", json={"timezone": "America/Chicago"}, headers=church_a.headers
    )
    assert zone.status_code == 200
    member = await create_member(client, church_a.headers)
    local = (datetime.now(CHICAGO) + timedelta(days=40)).replace(
        hour=9, minute=30, second=0, microsecond=0, tzinfo=None
    )

    response = await _schedule(client, church_a.headers, member["id"], local.isoformat())

    assert response.status_code == 201, await response.get_data(as_text=True)
    item = await response.get_json()
    expected = local.replace(tzinfo=CHICAGO)
    assert datetime.fromisoformat(item["sendAt"]) == expected
    assert datetime.fromisoformat(item["sendAt"]).utcoffset() == timedelta(0)
    assert item["sendAtLocal"] == expected.isoformat()
    assert (item["timezone"], item["status"]) == ("America/Chicago", "scheduled")
    listing = await (
        await client.get("/api/scheduled-messages?status=scheduled", headers=church_a.headers)
    ).get_json()
    assert [i["id"] for i in listing["data"]] == [item["id"]]


def _next_spring_gap() -> datetime:
    """02:30 on the next day Chicago's clocks jump from 02:00 to 03:00."""
    day = datetime.now(CHICAGO).replace(hour=2, minute=30, second=0, microsecond=0, tzinfo=None)
    for _ in range(400):
        day += timedelta(days=1)
        if day.replace(tzinfo=CHICAGO).astimezone(UTC).astimezone(CHICAGO).hour != 2:
            return day
    raise AssertionError("no clock change within a year")


async def test_times_that_cannot_be_sent_are_refused_with_the_reason(client, church_a, church_b):
    await client.patch(
        "/api/church/settings", json={"timezone": "America/Chicago"}, headers=church_a.headers
    )
    member = await create_member(client, church_a.headers)
    past = (datetime.now(CHICAGO) - timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    cases = {
        past: "has passed",
        _next_spring_gap().isoformat(): "does not exist in America/Chicago",
        (datetime.now(UTC) + timedelta(days=400)).isoformat(): "at most 366 days",
        "next tuesday": "datetime",
    }
    for send_at, says in cases.items():
        response = await _schedule(client, church_a.headers, member["id"], send_at)
        assert response.status_code == 422, send_at
        assert says in await response.get_data(as_text=True), send_at
    foreign = await _schedule(
        client, church_b.headers, member["id"], (datetime.now(UTC) + timedelta(days=1)).isoformat()
    )
    assert foreign.status_code == 404
    assert not await ScheduledMessage.filter(church_id=church_a.church_id).exists()


async def test_the_cron_sends_a_due_message_once(client, church_a, due, make_worker, redis):
    step = await make_worker()
    sender = step.worker.context["sender"]

    first = await scheduled.run_due(now=datetime.now(UTC), sender=sender)
    again = await scheduled.run_due(now=datetime.now(UTC), sender=sender)

    [message] = await _messages_of(due["id"])
    assert first == [str(message.id)] and again == []
    item = await (
        await client.get(f"/api/scheduled-messages/{due['id']}", headers=church_a.headers)
    ).get_json()
    assert (item["status"], item["messageId"]) == ("sent", str(message.id))
    before = len(await LogProvider(redis).sent())
    assert await step.run_until_idle() == 1
    assert [s["to"] for s in (await LogProvider(redis).sent())[before:]] == [due["member"]["phone"]]
    cancel = await client.post(
        f"/api/scheduled-messages/{due['id']}/cancel", headers=church_a.headers
    )
    assert cancel.status_code == 409
    assert (await cancel.get_json())["error"]["code"] == "not_cancellable"


async def test_two_cron_runs_at_once_send_it_once(due, make_worker, redis):
    step = await make_worker()
    prefix = f"test-scheduled-{uuid.uuid4().hex[:8]}:"
    contexts = []
    for holder in ("server-a:1", "server-b:2"):
        ctx = dict(step.worker.context)
        ctx["locks"] = LockService(redis, prefix=prefix, holder=holder)
        contexts.append(ctx)

    outcomes = await asyncio.gather(*(scheduled_messages(ctx) for ctx in contexts))

    assert sorted(o["ran"] for o in outcomes) == [False, True]
    assert len(await _messages_of(due["id"])) == 1


async def test_two_runners_past_the_claim_still_record_one_message(
    due, make_worker, redis, monkeypatch
):
    # Even without the cron lock (a run resumed after a crash meets a new one): both hold
    # the claim and call send_message; its idempotency key records one message.
    step = await make_worker()
    pause = Pause()
    monkeypatch.setattr(send_message, "send_message", pause.before(send_message.send_message))
    sender = step.worker.context["sender"]

    runs = [
        asyncio.create_task(scheduled.run_due(now=datetime.now(UTC), sender=sender))
        for _ in range(2)
    ]
    await pause.until(2)  # both runners hold the claim
    pause.release.set()
    results = await asyncio.gather(*runs)

    [message] = await _messages_of(due["id"])
    assert sorted(results) == [[], [str(message.id)]]
    before = len(await LogProvider(redis).sent())
    await step.run_until_idle()
    assert len(await LogProvider(redis).sent()) - before == 1


async def test_a_cancel_before_the_cron_claims_it_wins(
    client, church_a, due, make_worker, monkeypatch
):
    step = await make_worker()
    pause = Pause()
    monkeypatch.setattr(scheduled, "claim", pause.before(scheduled.claim))
    run = asyncio.create_task(
        scheduled.run_due(now=datetime.now(UTC), sender=step.worker.context["sender"])
    )
    await pause.reached.wait()  # the cron has read the due row, not yet claimed it

    cancel = await client.post(
        f"/api/scheduled-messages/{due['id']}/cancel", headers=church_a.headers
    )
    pause.release.set()

    assert cancel.status_code == 200
    assert (await cancel.get_json())["status"] == "cancelled"
    assert await run == []
    assert await _messages_of(due["id"]) == []
    stored = await ScheduledMessage.get(id=due["id"])
    assert stored.status == ScheduledStatus.CANCELLED and stored.message_id is None
    again = await client.post(
        f"/api/scheduled-messages/{due['id']}/cancel", headers=church_a.headers
    )
    assert again.status_code == 200  # cancelling a cancelled message answers it as it is


async def test_a_cancel_after_the_cron_claims_it_is_refused_and_it_is_sent(
    client, church_a, due, make_worker, monkeypatch
):
    step = await make_worker()
    pause = Pause()
    monkeypatch.setattr(send_message, "send_message", pause.before(send_message.send_message))
    run = asyncio.create_task(
        scheduled.run_due(now=datetime.now(UTC), sender=step.worker.context["sender"])
    )
    await pause.reached.wait()  # claimed, its message not recorded yet

    cancel = await client.post(
        f"/api/scheduled-messages/{due['id']}/cancel", headers=church_a.headers
    )
    pause.release.set()

    assert cancel.status_code == 409
    assert (await cancel.get_json())["error"]["details"] == {"status": "sending"}
    made = await run
    [message] = await _messages_of(due["id"])
    assert made == [str(message.id)]
    assert (await ScheduledMessage.get(id=due["id"])).status == ScheduledStatus.SENT


async def test_a_member_who_opted_out_before_the_time_is_not_texted(
    client, church_a, due, make_worker, redis
):
    step = await make_worker()
    await client.patch(
        f"/api/members/{due['member']['id']}", json={"optInSms": False}, headers=church_a.headers
    )

    await scheduled.run_due(now=datetime.now(UTC), sender=step.worker.context["sender"])

    [message] = await _messages_of(due["id"])
    assert message.recipient_count == 0
    before = len(await LogProvider(redis).sent())
    await step.run_until_idle()
    assert len(await LogProvider(redis).sent()) == before


async def test_another_churchs_scheduled_message_cannot_be_cancelled(
    client, church_a, church_b, due
):
    response = await client.post(
        f"/api/scheduled-messages/{due['id']}/cancel", headers=church_b.headers
    )
    assert response.status_code == 404
    assert (await ScheduledMessage.get(id=due["id"])).status == ScheduledStatus.SCHEDULED


@pytest.mark.parametrize(
    "send_at", ["0001-01-01T00:00:00Z", "0001-01-01T00:00", "9999-12-31T23:59"]
)
async def test_send_at_at_the_edge_of_the_calendar_is_422_not_500(client, church_a, send_at):
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):  # UTC+14 and UTC-11
        changed = await client.patch(
            "/api/church/settings", json={"timezone": zone}, headers=church_a.headers
        )
        assert changed.status_code == 200
        response = await client.post(
            "/api/scheduled-messages",
            json={"content": "Edge", "targetType": "all", "sendAt": send_at},
            headers=church_a.headers,
        )
        assert response.status_code == 422, await response.get_data(as_text=True)
        assert (await response.get_json())["error"]["details"][0]["field"] == "sendAt"
