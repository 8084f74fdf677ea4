"""Cron jobs under distributed locks: with several workers each cycle runs exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter
from redis.asyncio import Redis

from koinonia.delivery.sms import LogProvider
from koinonia.delivery.sms.log import LINKED_NUMBERS_KEY
from koinonia.jobs import (
    phone_link_recovery,
    recurring_messages,
    requeue_stalled_deliveries,
    run_once_per_cycle,
    stalled_sweep_cron,
)
from koinonia.models.messaging import (
    ChurchPhoneNumber,
    Delivery,
    DeliveryStatus,
    LinkStatus,
    Message,
    RecurringMessage,
)
from koinonia.stores.locks import LockService
from tests.messaging_fixtures import (
    create_group,
    create_member,
    new_phone,
    redis_near_its_memory_limit,
    text_member,
)


@pytest.fixture
def lock_prefix() -> str:
    # Cycle locks outlive the work (until the cycle ends); a prefix per test keeps tests apart.
    return f"test-cron-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def two_workers(make_worker, redis: Redis, lock_prefix: str):
    """Two worker contexts, as on two servers: same queue and Redis, different holders."""
    step = await make_worker()
    contexts = []
    for holder in ("server-a:1", "server-b:2"):
        ctx = dict(step.worker.context)
        ctx["locks"] = LockService(redis, prefix=lock_prefix, holder=holder)
        ctx["provider"] = LogProvider(redis)
        contexts.append(ctx)
    return contexts


async def test_two_workers_in_the_same_cycle_run_it_once(
    client, church_a, two_workers, redis, caplog
):
    member = await create_member(client, church_a.headers)
    group = await create_group(client, church_a.headers, [member["id"]])
    recurring = await RecurringMessage.create(
        church_id=church_a.church_id,
        content="Weekly reminder",
        target_type="group",
        target_ids=[group["id"]],
        schedule="0 9 * * 0",
        next_run_at=datetime.now(UTC) - timedelta(minutes=1),
    )

    with caplog.at_level(logging.INFO, logger="koinonia.jobs"):
        outcomes = await asyncio.gather(*(recurring_messages(ctx) for ctx in two_workers))

    assert sorted(o["ran"] for o in outcomes) == [False, True]
    created = await Message.filter(
        church_id=church_a.church_id, idempotency_key__startswith=f"recurring:{recurring.id}:"
    )
    assert len(created) == 1
    assert created[0].recipient_count == 1
    assert "skipping recurring-messages cycle" in caplog.text
    assert "lock held by server-" in caplog.text
    await recurring.refresh_from_db()
    assert recurring.next_run_at > datetime.now(UTC)


async def test_a_late_worker_does_not_rerun_a_finished_cycle(two_workers):
    first, late = two_workers
    runs: list[str] = []

    async def work(name: str) -> None:
        runs.append(name)

    assert await run_once_per_cycle(first["locks"], "job", 3600, lambda: work("first"))
    # The first run has finished and released nothing: the cycle stays claimed.
    assert not await run_once_per_cycle(late["locks"], "job", 3600, lambda: work("late"))
    assert runs == ["first"]
    [active] = await first["locks"].list_active()
    assert active["holder"] == "server-a:1"
    assert active["ttlMs"] > 5_000


async def test_other_server_cannot_release_the_cycle_lock(two_workers):
    first, other = two_workers
    await run_once_per_cycle(first["locks"], "job", 3600, lambda: asyncio.sleep(0))
    [active] = await first["locks"].list_active()

    assert not await other["locks"].release_token(active["name"], "server-b:2:guessed-token")
    assert await other["locks"].is_held(active["name"])


async def test_failing_work_still_claims_the_cycle(two_workers):
    first, other = two_workers

    async def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await run_once_per_cycle(first["locks"], "job", 3600, boom)
    # Not retried by another server in the same cycle; the next cycle tries again.
    assert not await run_once_per_cycle(other["locks"], "job", 3600, lambda: asyncio.sleep(0))


async def test_phone_link_recovery_runs_once_and_relinks_failed_numbers(
    church_a, two_workers, redis, settings
):
    failed = await ChurchPhoneNumber.create(
        church_id=church_a.church_id, number=new_phone(), status=LinkStatus.FAILED, attempts=1
    )
    exhausted = await ChurchPhoneNumber.create(
        church_id=church_a.church_id,
        number=new_phone(),
        status=LinkStatus.FAILED,
        attempts=settings.phone_link_max_attempts,
    )

    outcomes = await asyncio.gather(*(phone_link_recovery(ctx) for ctx in two_workers))

    assert sorted(o["ran"] for o in outcomes) == [False, True]
    await failed.refresh_from_db()
    await exhausted.refresh_from_db()
    assert failed.status == LinkStatus.LINKED and failed.attempts == 2
    assert exhausted.status == LinkStatus.FAILED  # out of attempts: left for an operator
    assert json.loads(await redis.hget(LINKED_NUMBERS_KEY, failed.number)) == {
        "smsUrl": settings.public_base_url + "/api/webhooks/sms/inbound",
        "statusCallback": settings.public_base_url + "/api/webhooks/sms/status",
    }


async def test_stalled_deliveries_are_enqueued_again_once(client, church_a, make_worker, redis):
    member = await create_member(client, church_a.headers)
    message_id = await text_member(client, church_a.headers, member["id"], "lost enqueue")
    # The job never reached Redis (as when Redis failed right after the commit): empty the
    # queue, and age the delivery past the stall threshold.
    step = await make_worker()
    await Delivery.filter(message_id=message_id).update(
        next_attempt_at=datetime.now(UTC) - timedelta(minutes=10)
    )
    prefix = f"test-stalled-{uuid.uuid4().hex[:8]}:"
    ctx = {**step.worker.context, "locks": LockService(redis, prefix=prefix, holder="a:1")}

    outcome = await requeue_stalled_deliveries(ctx)

    assert outcome["ran"] and outcome["requeued"] >= 1
    assert await step.run_until_idle() >= 1
    assert (await Delivery.get(message_id=message_id)).status == DeliveryStatus.SENT
    # The same cycle does not run again on another server.
    other = {**ctx, "locks": LockService(redis, prefix=prefix, holder="b:2")}
    assert (await requeue_stalled_deliveries(other))["ran"] is False


async def test_waiting_job_is_not_duplicated_by_the_stall_sweep(
    client, church_a, make_worker, redis
):
    step = await make_worker()
    member = await create_member(client, church_a.headers)
    message_id = await text_member(client, church_a.headers, member["id"], "slow queue")
    await Delivery.filter(message_id=message_id).update(
        next_attempt_at=datetime.now(UTC) - timedelta(minutes=10)
    )
    ctx = {
        **step.worker.context,
        "locks": LockService(redis, prefix=f"test-{uuid.uuid4().hex[:8]}:", holder="a:1"),
    }

    outcome = await requeue_stalled_deliveries(ctx)

    assert outcome["ran"]
    assert await step.queue.count("queued") == 1  # still the one job the API enqueued


async def test_stalled_sweep_takes_only_deliveries_queued_longer_than_its_setting(
    client, church_a, make_worker, redis
):
    member = await create_member(client, church_a.headers)
    old_id = await text_member(client, church_a.headers, member["id"], "lost 40 s ago")
    young_id = await text_member(client, church_a.headers, member["id"], "lost 10 s ago")
    step = await make_worker()  # empties the queue: as if both enqueues had failed
    now = datetime.now(UTC)
    await Delivery.filter(message_id=old_id).update(next_attempt_at=now - timedelta(seconds=40))
    await Delivery.filter(message_id=young_id).update(next_attempt_at=now - timedelta(seconds=10))
    settings = step.worker.context["settings"].model_copy(update={"sms_stalled_after_seconds": 30})
    locks = LockService(redis, prefix=f"test-stalled-{uuid.uuid4().hex[:8]}:", holder="a:1")
    ctx = {**step.worker.context, "settings": settings, "locks": locks}

    outcome = await requeue_stalled_deliveries(ctx)

    assert outcome["ran"] and outcome["requeued"] >= 1
    assert await step.run_until_idle() >= 1
    assert (await Delivery.get(message_id=old_id)).status == DeliveryStatus.SENT
    assert (await Delivery.get(message_id=young_id)).status == DeliveryStatus.QUEUED


@pytest.mark.parametrize(
    ("period", "first_runs"),
    [
        # The default: every 5 minutes at minute 2, 7, ... (the phone-link job runs at 0, 5).
        (300, ["00:02:00", "00:07:00", "00:12:00"]),
        (60, ["00:01:00", "00:02:00", "00:03:00"]),
        (1800, ["00:02:00", "00:32:00", "01:02:00"]),
        (20, ["00:00:20", "00:00:40", "00:01:00"]),
    ],
)
def test_stalled_sweep_runs_once_per_its_setting(period, first_runs):
    runs = croniter(stalled_sweep_cron(period), datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC))
    assert [runs.get_next(datetime).strftime("%H:%M:%S") for _ in first_runs] == first_runs


async def test_stalled_deliveries_wait_in_the_database_while_the_queue_is_full(
    client, church_a, make_worker, redis
):
    member = await create_member(client, church_a.headers)
    message_id = await text_member(client, church_a.headers, member["id"], "full queue")
    step = await make_worker()  # empties the queue: as if the enqueue had failed
    await Delivery.filter(message_id=message_id).update(
        next_attempt_at=datetime.now(UTC) - timedelta(minutes=10)
    )

    def context() -> dict:  # a lock of its own: each call is a new cycle
        locks = LockService(redis, prefix=f"test-full-{uuid.uuid4().hex[:8]}:", holder="a:1")
        return {**step.worker.context, "locks": locks}

    async with redis_near_its_memory_limit(redis):
        deferred = await requeue_stalled_deliveries(context())
    assert deferred["ran"] and deferred["requeued"] == 0 and deferred["deferred"] >= 1
    assert (await Delivery.get(message_id=message_id)).status == DeliveryStatus.QUEUED

    requeued = await requeue_stalled_deliveries(context())
    assert requeued["requeued"] >= 1
    assert await step.run_until_idle() >= 1
    assert (await Delivery.get(message_id=message_id)).status == DeliveryStatus.SENT
