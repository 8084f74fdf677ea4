"""POST/GET /api/messages: recipients, idempotency, tenant isolation, end-to-end sending."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from koinonia.delivery import messaging, send_message
from koinonia.delivery.sms import LogProvider
from koinonia.models.core import Church, Member
from koinonia.models.messaging import Delivery, Message, TargetType
from koinonia.services import queue as queue_service
from koinonia.web.state import get_state
from tests.messaging_fixtures import create_group, create_member, redis_near_its_memory_limit
from tests.pause import Pause


async def _post(client, headers, body, key: str | None = None):
    extra = {"Idempotency-Key": key} if key else {}
    return await client.post("/api/messages", json=body, headers={**headers, **extra})


async def test_group_message_reaches_every_opted_in_member_once(
    client, church_a, make_worker, redis
):
    both = await create_member(client, church_a.headers, first_name="InBoth")
    only_second = await create_member(client, church_a.headers, first_name="InSecond")
    opted_out = await create_member(client, church_a.headers, opt_in=False)
    outsider = await create_member(client, church_a.headers, first_name="NotTargeted")
    first = await create_group(client, church_a.headers, [both["id"], opted_out["id"]])
    second = await create_group(client, church_a.headers, [both["id"], only_second["id"]])
    worker = await make_worker()
    sent_before = len(await LogProvider(redis).sent())

    response = await _post(
        client,
        church_a.headers,
        {"content": "Choir at 7", "targetType": "group", "targetIds": [first["id"], second["id"]]},
    )

    assert response.status_code == 202
    created = await response.get_json()
    assert created["recipientCount"] == 2
    assert created["status"] == "queued"
    detail = await (
        await client.get(f"/api/messages/{created['id']}", headers=church_a.headers)
    ).get_json()
    assert detail["deliveryCounts"] == {
        "queued": 2,
        "sending": 0,
        "sent": 0,
        "delivered": 0,
        "failed": 0,
        "unknown": 0,
    }
    assert sorted(d["phone"] for d in detail["deliveries"]) == sorted(
        [both["phone"], only_second["phone"]]
    )

    assert await worker.run_until_idle() == 1  # one job carries the message's chunk

    sent = (await LogProvider(redis).sent())[sent_before:]
    assert sorted(s["to"] for s in sent) == sorted([both["phone"], only_second["phone"]])
    assert {s["body"] for s in sent} == {"Choir at 7"}
    assert opted_out["phone"] not in {s["to"] for s in sent}
    assert outsider["phone"] not in {s["to"] for s in sent}
    detail = await (
        await client.get(f"/api/messages/{created['id']}", headers=church_a.headers)
    ).get_json()
    assert detail["deliveryCounts"]["sent"] == 2
    assert detail["status"] == "sent"
    assert all(d["attempts"] == 1 and d["providerMessageId"] for d in detail["deliveries"])


async def test_target_all_and_members(client, church_a):
    a = await create_member(client, church_a.headers)
    b = await create_member(client, church_a.headers)
    out = await create_member(client, church_a.headers, opt_in=False)

    to_all = await _post(client, church_a.headers, {"content": "hi", "targetType": "all"})
    assert to_all.status_code == 202
    # church_a is a fresh church: its opted-in members are exactly a and b.
    assert (await to_all.get_json())["recipientCount"] == 2

    picked = await _post(
        client,
        church_a.headers,
        {"content": "hi", "targetType": "members", "targetIds": [a["id"], b["id"], out["id"]]},
    )
    assert (await picked.get_json())["recipientCount"] == 2


@pytest.mark.parametrize("key", ["k" * 256, "caf\u00e9", "tab\tinside"])
async def test_an_idempotency_key_outside_its_documented_form_is_refused_and_records_nothing(
    client, church_a, key
):
    member = await create_member(client, church_a.headers)
    body = {"content": "Bad key", "targetType": "members", "targetIds": [member["id"]]}

    refused = await _post(client, church_a.headers, body, key)

    assert refused.status_code == 400
    assert (
        "Idempotency-Key must be 1 to 255 printable ASCII"
        in (await refused.get_json())["error"]["message"]
    )
    listing = await (await client.get("/api/messages", headers=church_a.headers)).get_json()
    assert "Bad key" not in [m["content"] for m in listing["data"]]


async def test_idempotency_key_makes_retried_post_create_nothing(client, church_a):
    member = await create_member(client, church_a.headers)
    body = {"content": "Once only", "targetType": "members", "targetIds": [member["id"]]}
    key = f"retry-{uuid.uuid4()}"

    first = await _post(client, church_a.headers, body, key)
    again = await _post(client, church_a.headers, body, key)

    assert first.status_code == again.status_code == 202
    assert await first.get_json() == await again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    listing = await (
        await client.get("/api/messages?limit=200", headers=church_a.headers)
    ).get_json()
    assert [m["content"] for m in listing["data"]].count("Once only") == 1

    # The same key for a different message is refused, not silently answered with the first.
    other = await _post(client, church_a.headers, {**body, "content": "Other"}, key)
    assert other.status_code == 409
    assert (await other.get_json())["error"]["code"] == "idempotency_key_reused"

    # Keys are per church: another key creates a new message.
    fresh = await _post(client, church_a.headers, body, f"retry-{uuid.uuid4()}")
    assert (await fresh.get_json())["id"] != (await first.get_json())["id"]


async def test_tenant_isolation(client, church_a, church_b):
    member_a = await create_member(client, church_a.headers)
    group_a = await create_group(client, church_a.headers, [member_a["id"]])
    created = await _post(client, church_a.headers, {"content": "A only", "targetType": "all"})
    message_id = (await created.get_json())["id"]

    assert (
        await client.get(f"/api/messages/{message_id}", headers=church_b.headers)
    ).status_code == 404
    listing = await (await client.get("/api/messages", headers=church_b.headers)).get_json()
    assert message_id not in [m["id"] for m in listing["data"]]
    # Church B cannot text church A's group or members by id.
    for body in (
        {"content": "x", "targetType": "group", "targetIds": [group_a["id"]]},
        {"content": "x", "targetType": "members", "targetIds": [member_a["id"]]},
    ):
        response = await _post(client, church_b.headers, body)
        assert response.status_code == 404
        assert (await response.get_json())["error"]["code"] == "not_found"


async def test_bad_input_is_a_clear_error(client, church_a):
    cases = [
        ({"content": "", "targetType": "all"}, 422),
        ({"content": "x", "targetType": "everyone"}, 422),
        ({"content": "x", "targetType": "group"}, 422),
        ({"content": "x", "targetType": "group", "targetIds": ["not-a-uuid"]}, 422),
        ({"content": "x" * 1601, "targetType": "all"}, 422),
        ({"targetType": "all"}, 422),
    ]
    for body, status in cases:
        response = await _post(client, church_a.headers, body)
        assert response.status_code == status, body
        assert (await response.get_json())["error"]["code"] == "validation_error"
    unknown = await _post(
        client,
        church_a.headers,
        {"content": "x", "targetType": "group", "targetIds": [str(uuid.uuid4())]},
    )
    assert unknown.status_code == 404
    bad_key = await _post(client, church_a.headers, {"content": "x", "targetType": "all"}, " ")
    assert bad_key.status_code == 400


async def test_requires_authentication(client):
    assert (await client.get("/api/messages")).status_code == 401
    assert (
        await client.post("/api/messages", json={"content": "x", "targetType": "all"})
    ).status_code == 401


async def test_a_full_queue_refuses_new_messages_with_503_and_records_nothing(
    app, client, church_a, redis
):
    member = await create_member(client, church_a.headers)
    body = {"content": "while full", "targetType": "members", "targetIds": [member["id"]]}
    key = str(uuid.uuid4())
    headroom = get_state(app).queue_headroom
    headroom.interval = 0  # read Redis's memory on every request of this test
    messages_before = await Message.filter(church_id=church_a.church_id).count()
    try:
        async with redis_near_its_memory_limit(redis):
            refused = await _post(client, church_a.headers, body, key)
            error = (await refused.get_json())["error"]
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "60"
            assert error["code"] == "queue_full"
            assert "Nothing was recorded" in error["message"]
            assert await Message.filter(church_id=church_a.church_id).count() == messages_before

        # Room again: the same key records the message now (it was never used).
        accepted = await _post(client, church_a.headers, body, key)
    finally:
        # A fresh reading (Redis unlimited again) before the 1 s cache returns, so the next
        # test's first request does not meet this test's "full" reading.
        await headroom.ratio()
        headroom.interval = 1.0
    assert accepted.status_code == 202
    assert "Idempotent-Replayed" not in accepted.headers
    assert await Message.filter(church_id=church_a.church_id).count() == messages_before + 1


@pytest.mark.parametrize("with_key", [False, True])
async def test_member_deleted_between_the_recipients_query_and_the_insert_is_left_out(
    client, church_a, monkeypatch, with_key
):
    # Before: IntegrityError (500) on the delivery's foreign key, or DoesNotExist (500) with
    # an Idempotency-Key, whose handler looked for a message the failed insert never made.
    gone = await create_member(client, church_a.headers)
    kept = await create_member(client, church_a.headers)
    real = messaging.resolve_recipients

    async def recipients_then_member_deleted(*args, **kwargs):
        found = await real(*args, **kwargs)
        await Member.filter(id=gone["id"]).delete()  # another request deletes the member now
        return found

    monkeypatch.setattr(messaging, "resolve_recipients", recipients_then_member_deleted)
    body = {"content": "hi", "targetType": "members", "targetIds": [gone["id"], kept["id"]]}

    response = await _post(client, church_a.headers, body, str(uuid.uuid4()) if with_key else None)

    assert response.status_code == 202, await response.get_data(as_text=True)
    created = await response.get_json()
    assert created["recipientCount"] == 1 and created["status"] == "queued"
    [delivery] = await Delivery.filter(message_id=created["id"])
    assert str(delivery.member_id) == kept["id"]
    assert (await Message.get(id=created["id"])).recipient_count == 1


async def test_a_deleted_churchs_deliveries_go_with_its_messages(client, church_a, church_b):
    # delivery.church_id has no foreign key of its own (migration 0006): a church's
    # deliveries are deleted through its messages' ON DELETE CASCADE.
    for church in (church_a, church_b):
        member = await create_member(client, church.headers)
        body = {"content": "hi", "targetType": "members", "targetIds": [member["id"]]}
        assert (await _post(client, church.headers, body)).status_code == 202

    await Church.filter(id=church_a.church_id).delete()

    assert not await Delivery.filter(church_id=church_a.church_id).exists()
    assert not await Message.filter(church_id=church_a.church_id).exists()
    assert await Delivery.filter(church_id=church_b.church_id).count() == 1


async def test_a_send_cancelled_after_its_record_still_enqueues_its_deliveries(
    app, client, church_a, monkeypatch
):
    # Before: a request cancelled between its commit and its enqueue (the client went away,
    # and Quart cancels the handler) left the deliveries `queued` for the stalled sweep.
    member = await create_member(client, church_a.headers)
    state = get_state(app)
    sender = send_message.Sender(state.sms_queue, state.settings, state.queue_headroom)
    enqueued: list[uuid.UUID] = []
    done = asyncio.Event()
    real_enqueue = queue_service.enqueue_deliveries

    async def enqueue_and_note(queue, settings, ids):
        await real_enqueue(queue, settings, ids)
        enqueued.extend(ids)
        done.set()

    pause = Pause()
    monkeypatch.setattr(queue_service, "enqueue_deliveries", pause.before(enqueue_and_note))
    sending = asyncio.create_task(
        send_message.send_message(
            sender,
            church_id=uuid.UUID(church_a.church_id),
            created_by_id=None,
            content="Cancelled caller",
            target_type=TargetType.MEMBERS,
            target_ids=[member["id"]],
            idempotency_key=None,
        )
    )
    await asyncio.wait_for(pause.reached.wait(), 10)  # recorded, about to enqueue
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    pause.release.set()

    await asyncio.wait_for(done.wait(), 10)
    [delivery] = await Delivery.filter(member_id=member["id"])
    assert enqueued == [delivery.id]


def test_new_uuids_are_distinct_version_4_uuids():
    made = messaging.new_uuids(1000)
    assert len(set(made)) == 1000
    assert all(isinstance(u, uuid.UUID) and u.version == 4 for u in made)
    assert all(u.variant == uuid.RFC_4122 and uuid.UUID(str(u)) == u for u in made)
    assert messaging.new_uuids(0) == []
