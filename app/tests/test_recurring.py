"""Recurring messages: API and the due-run of the minute cron job."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from koinonia.delivery import send_message
from koinonia.delivery.sms import LogProvider
from koinonia.models.messaging import Delivery, DeliveryStatus, Message, RecurringMessage
from koinonia.services import recurring
from koinonia.services.queue import QueueHeadroom
from tests.messaging_fixtures import create_group, create_member, redis_near_its_memory_limit
from tests.pause import Pause


async def _create(client, headers, **overrides):
    member = await create_member(client, headers)
    group = await create_group(client, headers, [member["id"]])
    body = {
        "content": "Sunday service at 10",
        "targetType": "group",
        "targetIds": [group["id"]],
        "schedule": "0 9 * * 0",
        **overrides,
    }
    return await client.post("/api/recurring-messages", json=body, headers=headers)


async def test_create_list_update_delete(client, church_a):
    response = await _create(client, church_a.headers)
    assert response.status_code == 201
    created = await response.get_json()
    next_run = datetime.fromisoformat(created["nextRunAt"])
    assert next_run > datetime.now(UTC)
    assert (next_run.weekday(), next_run.hour, next_run.minute) == (6, 9, 0)  # Sunday 09:00
    assert created["active"] is True

    listing = await (
        await client.get("/api/recurring-messages", headers=church_a.headers)
    ).get_json()
    assert [r["id"] for r in listing["data"]] == [created["id"]]

    patched = await client.patch(
        f"/api/recurring-messages/{created['id']}",
        json={"schedule": "30 18 * * 3", "active": False, "content": "Midweek"},
        headers=church_a.headers,
    )
    assert patched.status_code == 200
    body = await patched.get_json()
    moved = datetime.fromisoformat(body["nextRunAt"])
    assert (moved.weekday(), moved.hour, moved.minute) == (2, 18, 30)
    assert body["active"] is False and body["content"] == "Midweek"

    deleted = await client.delete(
        f"/api/recurring-messages/{created['id']}", headers=church_a.headers
    )
    assert deleted.status_code == 204
    assert not await RecurringMessage.exists(id=created["id"])


async def test_invalid_schedule_and_targets(client, church_a, church_b):
    for schedule in ("every sunday", "0 9 * *", "61 9 * * 0", "0 0 9 * * 0"):
        response = await _create(client, church_a.headers, schedule=schedule)
        assert response.status_code == 422, schedule
        assert (await response.get_json())["error"]["code"] == "validation_error"
    foreign_group = await create_group(client, church_b.headers, [])
    response = await _create(client, church_a.headers, targetIds=[foreign_group["id"]])
    assert response.status_code == 404


async def test_tenant_isolation(client, church_a, church_b):
    created = await (await _create(client, church_a.headers)).get_json()
    url = f"/api/recurring-messages/{created['id']}"

    assert (
        await client.patch(url, json={"active": False}, headers=church_b.headers)
    ).status_code == 404
    assert (await client.delete(url, headers=church_b.headers)).status_code == 404
    listing = await (
        await client.get("/api/recurring-messages", headers=church_b.headers)
    ).get_json()
    assert created["id"] not in [r["id"] for r in listing["data"]]
    assert (await RecurringMessage.get(id=created["id"])).active is True


async def test_due_run_sends_once_and_moves_schedule(client, church_a, make_worker, redis):
    step = await make_worker()
    sender = step.worker.context["sender"]
    created = await (await _create(client, church_a.headers)).get_json()
    due_at = datetime.now(UTC) - timedelta(minutes=2)
    await RecurringMessage.filter(id=created["id"]).update(next_run_at=due_at)

    now = datetime.now(UTC)
    made = await recurring.run_due(now=now, sender=sender)

    [message] = await Message.filter(idempotency_key__startswith=f"recurring:{created['id']}:")
    assert str(message.id) in made
    assert message.content == "Sunday service at 10" and message.recipient_count == 1
    item = await RecurringMessage.get(id=created["id"])
    assert item.next_run_at > now and item.last_run_at == now

    # Not due any more: a second run in the same minute sends nothing.
    assert str(message.id) not in await recurring.run_due(now=now, sender=sender)

    # A runner that crashed after sending but before moving the schedule runs it again:
    # the run's idempotency key finds the message it already made.
    await RecurringMessage.filter(id=created["id"]).update(next_run_at=due_at)
    assert str(message.id) not in await recurring.run_due(now=now, sender=sender)
    assert (
        await Message.filter(idempotency_key__startswith=f"recurring:{created['id']}:").count() == 1
    )
    # The queue got the run's delivery; the worker texts it once.
    assert await step.run_until_idle() >= 1
    [delivery] = await Delivery.filter(message_id=message.id)
    assert delivery.status == DeliveryStatus.SENT
    assert await LogProvider(redis).calls(f"delivery-{delivery.id}") == 1


async def test_two_runners_of_one_cycle_record_and_text_once(
    client, church_a, make_worker, redis, monkeypatch
):
    # The cycle's Redis lock can be granted twice (a Redis failover loses it before it
    # reached the replica): the work itself is fenced in PostgreSQL, by the run's
    # idempotency key (unique per church), so both runners record one message, texted once.
    step = await make_worker()
    sender = step.worker.context["sender"]
    created = await (await _create(client, church_a.headers)).get_json()
    await RecurringMessage.filter(id=created["id"]).update(
        next_run_at=datetime.now(UTC) - timedelta(minutes=2)
    )
    pause = Pause()
    monkeypatch.setattr(send_message, "send_message", pause.before(send_message.send_message))

    now = datetime.now(UTC)
    runs = [asyncio.create_task(recurring.run_due(now=now, sender=sender)) for _ in range(2)]
    await pause.until(2)  # both runners read the due row and are about to record its run
    pause.release.set()
    results = await asyncio.gather(*runs)

    [message] = await Message.filter(idempotency_key__startswith=f"recurring:{created['id']}:")
    assert sorted(results) == [[], [str(message.id)]]
    assert await step.run_until_idle() >= 1
    [delivery] = await Delivery.filter(message_id=message.id)
    assert await LogProvider(redis).calls(f"delivery-{delivery.id}") == 1


async def test_due_run_waits_while_the_queue_is_full(client, church_a, make_worker, redis):
    step = await make_worker()
    created = await (await _create(client, church_a.headers)).get_json()
    due_at = datetime.now(UTC) - timedelta(minutes=2)
    await RecurringMessage.filter(id=created["id"]).update(next_run_at=due_at)
    # A fresh reading of the queue's memory on every call.
    sender = replace(
        step.worker.context["sender"],
        headroom=QueueHeadroom(step.queue.redis, 0.8, interval=0),
    )

    async with redis_near_its_memory_limit(redis):
        made = await recurring.run_due(now=datetime.now(UTC), sender=sender)

    assert made == []
    assert not await Message.exists(idempotency_key__startswith=f"recurring:{created['id']}:")
    # The run is not skipped: it is still due, for the next cycle.
    assert (await RecurringMessage.get(id=created["id"])).next_run_at == due_at
    assert await recurring.run_due(now=datetime.now(UTC), sender=sender)


async def test_inactive_recurring_message_is_not_sent(client, church_a, make_worker):
    step = await make_worker()
    created = await (await _create(client, church_a.headers, active=False)).get_json()
    await RecurringMessage.filter(id=created["id"]).update(
        next_run_at=datetime.now(UTC) - timedelta(minutes=1)
    )

    await recurring.run_due(now=datetime.now(UTC), sender=step.worker.context["sender"])
    assert not await Message.exists(idempotency_key__startswith=f"recurring:{created['id']}:")
