"""The chunked send job on a real SAQ worker, PostgreSQL behind PgBouncer and Redis: one
provider call per opted-in recipient under every fault, counted where the call crosses to
the provider (the fake Twilio's requests, the log provider's per-delivery call counter).

Races are staged by pausing a provider call on an asyncio.Event (or the fake Twilio's
server thread on a threading.Event), never by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from saq.job import Status

from koinonia.delivery import jobs as delivery_jobs
from koinonia.delivery import store
from koinonia.delivery.jobs import (
    ProviderSlots,
    delivery_idempotency_key,
    retry_delay,
    send_deliveries,
    settle_in_doubt,
    stale_claim_age,
)
from koinonia.delivery.sms import LogProvider, TwilioProvider
from koinonia.jobs import build_worker
from koinonia.models.messaging import Delivery, DeliveryStatus, Message
from koinonia.services import queue as queue_service
from koinonia.services.queue import (
    SEND_DELIVERIES,
    create_queue,
    delivery_job_key,
    enqueue_deliveries,
)
from koinonia.web.state import get_state
from tests.messaging_fixtures import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    StepWorker,
    create_member,
    post_webhook,
)


class PausingProvider(LogProvider):
    """The log provider (it counts every call), whose sends wait at ``gate`` once
    ``entered`` is set: the racy point between the claim and the provider's answer."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def send(
        self, to, body, idempotency_key, status_callback_url=None, from_number=None
    ) -> str:
        self.entered.set()
        await self.gate.wait()
        return await super().send(to, body, idempotency_key, status_callback_url, from_number)


async def _message(
    client, headers, members: int = 1, extra_headers: dict | None = None
) -> tuple[dict, list[Delivery]]:
    """POST a message to ``members`` new opted-in members (create the worker first: it empties
    the queue). Returns the API's answer and the deliveries."""
    ids = [(await create_member(client, headers))["id"] for _ in range(members)]
    response = await client.post(
        "/api/messages",
        json={"content": "Choir at 7", "targetType": "members", "targetIds": ids},
        headers={**headers, **(extra_headers or {})},
    )
    assert response.status_code == 202, await response.get_data(as_text=True)
    message = await response.get_json()
    return message, list(await Delivery.filter(message_id=message["id"]).order_by("id"))


def _key(deliveries: list[Delivery]) -> str:
    """The job key of a one-chunk message: named after its first recipient's delivery."""
    first = min(deliveries, key=lambda d: str(d.member_id))
    return delivery_job_key([str(first.id)])


async def _calls(redis: Redis, deliveries: list[Delivery]) -> list[int]:
    provider = LogProvider(redis)
    return [await provider.calls(delivery_idempotency_key(d.id)) for d in deliveries]


async def _make_due(deliveries: list[Delivery]) -> None:
    """The retry backoff is over (instead of sleeping through it)."""
    await Delivery.filter(id__in=[d.id for d in deliveries]).update(
        next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)
    )


async def _scheduled_retry_keys(step: StepWorker) -> list[str]:
    """Keys of the jobs scheduled for later (a score above 0 in SAQ's incomplete set)."""
    ids = await step.queue.redis.zrangebyscore(step.queue.namespace("incomplete"), 1, "+inf")
    prefix = step.queue.job_id("")
    return [i.decode().removeprefix(prefix) for i in ids]


def test_retry_delay_is_exponential_from_two_seconds_with_bounded_jitter():
    assert [retry_delay(n, 2.0, 0.1, rand=lambda: 0.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert [retry_delay(n, 2.0, 0.1, rand=lambda: 1.0) for n in (1, 2, 3)] == [2.2, 4.4, 8.8]


# --- error classes -----------------------------------------------------------------------


async def test_not_accepted_sends_wait_again_with_exponential_backoff_then_send_once(
    client, church_a, make_worker, twilio_provider, fake_twilio, settings
):
    step = await make_worker(twilio_provider)
    # A base delay no loaded machine gets through between a failed attempt and the checks
    # below (with the default 2 s a second of lag let the early job claim a due delivery);
    # the test makes each retry due itself.
    base_delay = 600.0
    step.worker.context["settings"] = settings.model_copy(
        update={"sms_retry_delay_seconds": base_delay}
    )
    _message_body, [delivery] = await _message(client, church_a.headers)
    for _ in range(3):
        fake_twilio.fail_next(503, message="Service Unavailable")

    for attempt, factor in enumerate((1, 2, 4), start=1):
        before = datetime.now(UTC)
        assert await step.run_next()
        after = datetime.now(UTC)
        stored = await Delivery.get(id=delivery.id)
        assert stored.status == DeliveryStatus.QUEUED and stored.attempts == attempt
        assert "503" in stored.last_error
        # Exactly the exponential delay, plus at most 10 % of jitter, never less.
        wait = timedelta(seconds=base_delay * factor)
        assert before + wait <= stored.next_attempt_at <= after + wait * 1.1
        # One job scheduled for that time (not before it), and nothing due now.
        assert len(await _scheduled_retry_keys(step)) == 1
        assert await step.queue.count("queued") == 0
        # A job that runs early (a duplicate, a sweep) claims nothing: not due yet.
        assert (await send_deliveries(step.worker.context, delivery_ids=[str(delivery.id)]))[
            "claimed"
        ] == 0
        await _make_due([delivery])
        [retry_key] = await _scheduled_retry_keys(step)
        await step.fast_forward(retry_key)

    assert await step.run_next()  # fourth attempt succeeds
    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.SENT and stored.attempts == 4
    assert stored.provider_message_id and stored.last_error is None
    # Four calls reached Twilio; three were refused (not sent), one text went out.
    assert len(fake_twilio.requests) == 4 and len(fake_twilio.accepted) == 1


async def test_not_accepted_on_the_last_attempt_fails(
    client, church_a, make_worker, twilio_provider, fake_twilio, settings
):
    step = await make_worker(twilio_provider)
    _body, [delivery] = await _message(client, church_a.headers)
    await Delivery.filter(id=delivery.id).update(attempts=settings.sms_max_retries)
    fake_twilio.fail_next(429, code=20429, message="Too Many Requests")

    assert await step.run_next()

    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.FAILED
    assert "attempt 4 of 4" in stored.last_error
    assert await _scheduled_retry_keys(step) == []


async def test_permanent_error_fails_at_once(
    client, church_a, make_worker, twilio_provider, fake_twilio
):
    step = await make_worker(twilio_provider)
    message, [delivery] = await _message(client, church_a.headers)
    fake_twilio.fail_next(400, code=21211, message="The 'To' number is not a valid phone number.")

    assert await step.run_next()

    assert (await step.job(_key([delivery]))).status == Status.COMPLETE
    assert len(fake_twilio.requests) == 1
    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.FAILED and "21211" in stored.last_error
    detail = await (
        await client.get(f"/api/messages/{message['id']}", headers=church_a.headers)
    ).get_json()
    assert detail["status"] == "failed"
    assert detail["deliveryCounts"]["failed"] == 1


# --- chunks ------------------------------------------------------------------------------


async def test_a_message_goes_out_in_chunks_with_bounded_concurrency(
    client, church_a, make_worker, redis, settings
):
    limit = 3
    step = await make_worker()
    step.worker.context["settings"] = settings.model_copy(update={"sms_send_concurrency": limit})
    in_flight, peak = 0, 0
    full = asyncio.Event()

    class CountingProvider(LogProvider):
        async def send(
            self, to, body, idempotency_key, status_callback_url=None, from_number=None
        ) -> str:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight == limit:
                full.set()
            await asyncio.wait_for(full.wait(), 5)  # everyone waits until the slots are full
            in_flight -= 1
            return await super().send(to, body, idempotency_key, status_callback_url, from_number)

    step.worker.context["provider"] = CountingProvider(redis)
    _body, deliveries = await _message(client, church_a.headers, members=7)
    # One job for the message (7 < the chunk size of 100) ...
    assert await step.queue.count("queued") == 1
    assert await step.run_until_idle() == 1
    # ... at most ``limit`` sends at once, every member texted once.
    assert peak == limit
    assert await _calls(redis, deliveries) == [1] * 7
    assert {d.status for d in await Delivery.filter(id__in=[d.id for d in deliveries])} == {
        DeliveryStatus.SENT
    }


class HeldProvider(LogProvider):
    """The log provider (it counts every call), each call held until the test lets it go:
    how many are in flight, and the most ever at once, are known at every step."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.held: list[asyncio.Future[None]] = []
        self.peak = 0
        self.entered = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return sum(not f.done() for f in self.held)

    async def send(
        self, to, body, idempotency_key, status_callback_url=None, from_number=None
    ) -> str:
        answer = asyncio.get_running_loop().create_future()
        self.held.append(answer)
        self.peak = max(self.peak, self.in_flight)
        self.entered.set()
        await answer
        return await super().send(to, body, idempotency_key, status_callback_url, from_number)

    async def until_in_flight(self, count: int) -> None:
        try:
            async with asyncio.timeout(5):
                while self.in_flight != count:
                    self.entered.clear()
                    await self.entered.wait()
        except TimeoutError:
            raise AssertionError(f"{self.in_flight} calls in flight, not {count}") from None

    def answer_one(self) -> None:
        next(f for f in self.held if not f.done()).set_result(None)


async def test_a_workers_jobs_together_keep_its_provider_slots_full_and_never_more(
    client, church_a, make_worker, redis, settings
):
    step = await make_worker()
    provider = HeldProvider(redis)
    worker = build_worker(
        settings.model_copy(update={"sms_send_concurrency": 5, "sms_worker_send_concurrency": 4}),
        step.queue,
        provider=provider,
        redis=redis,
        manage_resources=False,
        cron_jobs=[],
    )
    for startup in worker.startup or []:
        await startup(worker.context)
    ctx = worker.context
    slots = ctx["provider_slots"]
    assert isinstance(slots, ProviderSlots)
    _first, first = await _message(client, church_a.headers, members=5)
    _second, second = await _message(client, church_a.headers, members=5)
    jobs = [
        asyncio.create_task(send_deliveries(ctx, delivery_ids=[str(d.id) for d in chunk]))
        for chunk in (first, second)
    ]
    # Two jobs with windows of 5 would hold all 10 calls at once; the worker's 4 slots hold
    # 4, and each answer's slot is taken again by whichever job has rows left, until the
    # 10 are sent.
    for left in range(10, 0, -1):
        await provider.until_in_flight(min(4, left))
        provider.answer_one()
    await asyncio.gather(*jobs)
    assert provider.peak == 4
    assert slots.free == 4
    assert await _calls(redis, first + second) == [1] * 10


async def test_a_chunk_is_claimed_only_as_far_as_its_sends_in_flight(
    client, church_a, make_worker, redis, settings
):
    step = await make_worker()
    provider = PausingProvider(redis)
    window = 2
    ctx = {
        **step.worker.context,
        "provider": provider,
        "settings": settings.model_copy(update={"sms_send_concurrency": window}),
    }
    _body, deliveries = await _message(client, church_a.headers, members=5)
    ids = [d.id for d in deliveries]

    running = asyncio.create_task(send_deliveries(ctx, delivery_ids=[str(i) for i in ids]))
    await asyncio.wait_for(provider.entered.wait(), 5)  # the first window is at the provider
    statuses = [d.status for d in await Delivery.filter(id__in=ids)]
    assert sorted(statuses) == sorted(
        [DeliveryStatus.SENDING] * window + [DeliveryStatus.QUEUED] * 3
    )

    provider.gate.set()
    result = await asyncio.wait_for(running, 10)
    assert (result["claimed"], result["sent"]) == (5, 5)
    assert await _calls(redis, deliveries) == [1] * 5


async def test_enqueue_makes_one_job_per_chunk_and_refuses_a_chunk_already_waiting(
    make_worker, settings, monkeypatch
):
    monkeypatch.setattr(queue_service, "ENQUEUE_BATCH", 2)  # 3 jobs: two script calls
    step = await make_worker()
    chunked = settings.model_copy(update={"sms_chunk_size": 2})
    ids = [uuid.uuid4() for _ in range(5)]

    assert await enqueue_deliveries(step.queue, chunked, ids) == 5
    assert await enqueue_deliveries(step.queue, chunked, ids) == 0  # same chunks: refused
    assert await step.queue.count("queued") == 3
    job = await step.job(delivery_job_key([str(ids[2])]))
    assert job.function == SEND_DELIVERIES
    assert job.kwargs == {"delivery_ids": [str(ids[2]), str(ids[3])]}
    assert job.heartbeat == queue_service.DELIVERY_JOB_HEARTBEAT_SECONDS
    assert job.timeout == settings.sms_job_timeout_seconds
    # These deliveries do not exist: each job claims nothing and completes.
    assert await step.run_until_idle() == 3
    assert (await step.job(delivery_job_key([str(ids[4])]))).result["claimed"] == 0


async def test_burst_of_enqueues_waits_for_a_pooled_connection_instead_of_failing(
    make_settings,
):
    # The SAQ client's pool had 50 connections and raised MaxConnectionsError beyond; the
    # API swallowed it and those deliveries waited 5-10 minutes for the stalled sweep.
    settings = make_settings(redis_max_connections=2, queue_name=f"burst-{uuid.uuid4().hex}")
    queue = create_queue(settings)
    await queue.connect()
    try:
        counts = await asyncio.gather(
            *(enqueue_deliveries(queue, settings, [uuid.uuid4()]) for _ in range(30))
        )
        assert counts == [1] * 30
        assert await queue.count("queued") == 30
    finally:
        keys = [k async for k in queue.redis.scan_iter(match=f"saq:*{queue.name}*")]
        if keys:
            await queue.redis.delete(*keys)
        await queue.disconnect()


# --- repeats can claim only queued rows --------------------------------------------------


async def test_two_workers_given_the_same_chunk_text_each_member_once(
    client, church_a, make_worker, redis
):
    step = await make_worker()
    provider = PausingProvider(redis)
    ctx = {**step.worker.context, "provider": provider}
    _body, deliveries = await _message(client, church_a.headers, members=3)
    chunk = [str(d.id) for d in deliveries]

    first = asyncio.create_task(send_deliveries(ctx, delivery_ids=chunk))
    await asyncio.wait_for(provider.entered.wait(), 5)  # the first holds its claim
    second = await send_deliveries(ctx, delivery_ids=chunk)
    provider.gate.set()
    first_result = await first

    assert second["claimed"] == 0
    assert first_result["claimed"] == 3 and first_result["sent"] == 3
    assert await _calls(redis, deliveries) == [1, 1, 1]


async def test_saq_sweeping_an_active_job_does_not_text_twice(client, church_a, make_worker, redis):
    # saq #277: the sweep can re-queue a job that is still running; a second worker runs it.
    provider = PausingProvider(redis)
    step = await make_worker(provider)
    _body, deliveries = await _message(client, church_a.headers, members=2)
    key = _key(deliveries)

    running = asyncio.create_task(step.run_next())
    await asyncio.wait_for(provider.entered.wait(), 5)
    job = await step.job(key)
    assert job.status == Status.ACTIVE
    # Silent past its heartbeat (as if its worker died): the sweep puts it back.
    await job.update(touched=int((time.time() - 60) * 1000))
    assert step.queue.job_id(key) in await step.queue.sweep(abort=0.1)

    other = await make_worker_sharing(step, redis)
    await other.fast_forward(key)
    assert await other.run_next()  # the second run claims nothing
    provider.gate.set()
    await running

    assert await _calls(redis, deliveries) == [1, 1]
    stored = await Delivery.filter(id__in=[d.id for d in deliveries])
    assert {d.status for d in stored} == {DeliveryStatus.SENT}


async def make_worker_sharing(step: StepWorker, redis: Redis) -> StepWorker:
    """A second worker on the same queue (another server), with its own log provider."""
    worker = build_worker(
        step.worker.context["settings"],
        step.queue,
        provider=LogProvider(redis),
        redis=redis,
        manage_resources=False,
        cron_jobs=[],
    )
    for startup in worker.startup or []:
        await startup(worker.context)
    return StepWorker(worker=worker, queue=step.queue)


async def test_replaying_an_idempotency_key_after_a_partial_failure_sends_nothing_again(
    client, church_a, make_worker, twilio_provider, fake_twilio
):
    step = await make_worker(twilio_provider)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first, deliveries = await _message(client, church_a.headers, members=2, extra_headers=key)
    fake_twilio.fail_next(400, code=21610, message="unsubscribed recipient")
    assert await step.run_until_idle() == 1
    statuses = sorted(str(d.status) for d in await Delivery.filter(message_id=first["id"]))
    assert statuses == ["failed", "sent"]

    replay = await client.post(
        "/api/messages",
        json={
            "content": "Choir at 7",
            "targetType": "members",
            "targetIds": [str(d.member_id) for d in deliveries],
        },
        headers={**church_a.headers, **key},
    )
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    # Nothing was enqueued for the failed one (nor the sent one), and nothing is sent.
    assert await step.queue.count("queued") == 0
    assert await step.run_until_idle() == 0
    assert len(fake_twilio.requests) == 2


# --- faults around the provider call -----------------------------------------------------


async def _claimed_by_a_worker_that_dies(deliveries: list[Delivery]) -> uuid.UUID:
    """What a worker killed right after its claim leaves: the rows ``sending``, its token."""
    token = uuid.uuid4()
    claimed = await store.claim([d.id for d in deliveries], token, datetime.now(UTC))
    assert len(claimed) == len(deliveries)
    return token


@pytest.mark.parametrize(
    "killed", ["before the call", "after the call", "with its call on the way"]
)
async def test_killed_worker_leaves_unknown_settled_by_evidence_never_by_a_blind_resend(
    client, church_a, make_worker, redis, settings, killed
):
    step = await make_worker()
    ctx = step.worker.context
    _body, deliveries = await _message(client, church_a.headers, members=2)
    await _claimed_by_a_worker_that_dies(deliveries)
    claimed_at = datetime.now(UTC)

    async def the_calls_arrive() -> None:
        for d in deliveries:
            await ctx["provider"].send(d.phone, "Choir at 7", delivery_idempotency_key(d.id))

    if killed == "after the call":  # the provider accepted them; the worker died before recording
        await the_calls_arrive()
    # The re-run of the chunk (SAQ swept the dead worker's job) claims nothing.
    assert (await send_deliveries(ctx, delivery_ids=[str(d.id) for d in deliveries]))[
        "claimed"
    ] == 0

    # Before any job could still hold the claim, it is left alone ...
    await settle_in_doubt(settings, ctx["provider"], step.queue, redis)
    stored = await Delivery.filter(id__in=[d.id for d in deliveries])
    assert {d.status for d in stored} == {DeliveryStatus.SENDING}
    # ... after, it is unknown, and the provider's own record settles it. (Counts are at
    # least ours: the sweep is global and the database is shared by the tests.)
    later = claimed_at + stale_claim_age(settings) + timedelta(seconds=1)
    outcome = await settle_in_doubt(settings, ctx["provider"], step.queue, redis, now=later)
    assert outcome["stale"] >= 2
    if killed == "after the call":
        assert outcome["found"] >= 2
    else:
        # No record yet, but a call given up on may still be on its way: no resend yet.
        assert later < claimed_at + timedelta(seconds=LogProvider.absence_is_evidence_after)
        stored = await Delivery.filter(id__in=[d.id for d in deliveries])
        assert {d.status for d in stored} == {DeliveryStatus.UNKNOWN}
        if killed == "with its call on the way":
            await the_calls_arrive()  # the partition heals: the retransmitted write lands
        no_call_can_arrive = claimed_at + timedelta(
            seconds=LogProvider.absence_is_evidence_after + 1
        )
        outcome = await settle_in_doubt(
            settings, ctx["provider"], step.queue, redis, now=no_call_can_arrive
        )
        if killed == "with its call on the way":
            assert outcome["found"] >= 2
        else:
            # The log provider's silence now proves it never got them: sent now, once.
            assert outcome["requeued"] >= 2
            await _make_due(deliveries)
            assert await step.run_until_idle() >= 1  # (others' requeued rows may ride along)
    stored = await Delivery.filter(id__in=[d.id for d in deliveries])
    assert {d.status for d in stored} == {DeliveryStatus.SENT}
    assert await _calls(redis, deliveries) == [1, 1]


async def test_killed_worker_with_twilio_ends_unknown_then_sent_by_callback_never_called_again(
    client, church_a, make_worker, twilio_provider, fake_twilio, settings, redis, webhook_settings
):
    step = await make_worker(twilio_provider)
    _body, [delivery] = await _message(client, church_a.headers)
    await _claimed_by_a_worker_that_dies([delivery])
    sid = await twilio_provider.send(delivery.phone, "Other text", "delivery-other")
    fake_twilio.accepted.clear()  # Twilio lists nothing matching: no evidence yet

    later = datetime.now(UTC) + stale_claim_age(settings) + timedelta(seconds=1)
    outcome = await settle_in_doubt(settings, twilio_provider, step.queue, redis, now=later)
    assert outcome["stale"] >= 1
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.UNKNOWN

    response = await post_webhook(
        client,
        f"/api/webhooks/sms/status?deliveryId={delivery.id}",
        {"MessageSid": sid, "MessageStatus": "delivered"},
    )
    assert response.status_code == 204
    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.DELIVERED and stored.provider_message_id == sid
    assert [r for r in fake_twilio.requests if r.method == "POST"][1:] == []


APP_DIR = Path(__file__).resolve().parents[1]


async def _worker_process(app, fake_twilio, **extra_env: str) -> asyncio.subprocess.Process:
    """``koinonia worker`` as deployed: its own process, on the app's queue, sending through
    Twilio's API (the fake Twilio) so that it can be killed with SIGKILL mid-call."""
    settings = get_state(app).settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOINONIA_")}
    env.update(
        PYTHONPATH=str(APP_DIR),
        KOINONIA_DATABASE_URL=settings.database_url.get_secret_value(),
        KOINONIA_REDIS_URL=settings.redis_url.get_secret_value(),
        KOINONIA_QUEUE_NAME=settings.queue_name,
        KOINONIA_SMS_PROVIDER="twilio",
        KOINONIA_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        KOINONIA_TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        KOINONIA_TWILIO_FROM_NUMBER=FROM_NUMBER,
        KOINONIA_TWILIO_BASE_URL=fake_twilio.base_url,
        KOINONIA_LOG_LEVEL="WARNING",
        **extra_env,
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koinonia.cli",
        "worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("evidence", ["status callback", "lookup"])
async def test_worker_killed_during_the_provider_call_ends_unknown_then_sent_never_called_again(
    client,
    church_a,
    app,
    make_worker,
    twilio_provider,
    fake_twilio,
    settings,
    redis,
    webhook_settings,
    evidence,
):
    step = await make_worker(twilio_provider)  # empties the queue; runs only when stepped
    members = 2
    arrived: list[str] = []
    all_in_flight, answer = threading.Event(), threading.Event()

    def accepted_then_hold(request) -> None:
        # Twilio has created the message; its answer waits until the worker is dead.
        arrived.append(request.headers.get("i-twilio-idempotency-token", ""))
        if len(arrived) == members:
            all_in_flight.set()
        answer.wait(60)

    fake_twilio.before_answer = accepted_then_hold
    worker = await _worker_process(app, fake_twilio)
    try:
        _body, deliveries = await _message(client, church_a.headers, members=members)
        in_flight = await asyncio.to_thread(all_in_flight.wait, 120)
        if not in_flight and worker.returncode is None:
            worker.kill()
        assert in_flight, (await worker.communicate())[1].decode(errors="replace")[-2000:]
        worker.kill()  # SIGKILL: nothing of the worker runs after this
        await worker.wait()
    finally:
        answer.set()
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    keys = {delivery_idempotency_key(d.id) for d in deliveries}
    assert set(arrived) == keys

    # Whatever SAQ does with the dead worker's job (its sweep re-queues it once silent past
    # its heartbeat), a run of the chunk claims nothing: the rows are ``sending``.
    await step.run_until_idle()
    rerun = await send_deliveries(step.worker.context, delivery_ids=[str(d.id) for d in deliveries])
    assert rerun["claimed"] == 0

    # Once no job can hold the claim any more, the deliveries are ``unknown`` ...
    later = datetime.now(UTC) + stale_claim_age(settings) + timedelta(seconds=1)
    await store.mark_stale_claims_unknown(later - stale_claim_age(settings), later)
    ids = [d.id for d in deliveries]
    assert {d.status for d in await Delivery.filter(id__in=ids)} == {DeliveryStatus.UNKNOWN}
    # ... and evidence, never a second call, makes them ``sent``.
    sids = {m["to"]: m["sid"] for m in fake_twilio.accepted}
    if evidence == "status callback":
        for d in deliveries:
            response = await post_webhook(
                client,
                f"/api/webhooks/sms/status?deliveryId={d.id}",
                {"MessageSid": sids[d.phone], "MessageStatus": "sent"},
            )
            assert response.status_code == 204
    else:
        outcome = await settle_in_doubt(settings, twilio_provider, step.queue, redis, now=later)
        assert outcome["found"] >= members
    stored = await Delivery.filter(id__in=ids)
    assert {d.status for d in stored} == {DeliveryStatus.SENT}
    assert {d.phone: d.provider_message_id for d in stored} == sids
    assert await step.run_until_idle() == 0
    assert fake_twilio.calls_per_delivery() == dict.fromkeys(keys, 1)


async def test_worker_killed_mid_chunk_leaves_only_the_calls_in_flight_in_doubt(
    client, church_a, app, make_worker, twilio_provider, fake_twilio, settings, webhook_settings
):
    """The job claims a window at a time: killed while its first window's calls are at the
    provider, the rest of its chunk was never claimed, so it is ``queued`` and goes out once
    when the job runs again; only the calls in flight wait for evidence."""
    step = await make_worker(twilio_provider)  # empties the queue; runs only when stepped
    window, members = 2, 5
    arrived: list[str] = []
    window_in_flight, answer = threading.Event(), threading.Event()

    def accepted_then_hold(request) -> None:
        arrived.append(request.headers.get("i-twilio-idempotency-token", ""))
        if len(arrived) == window:
            window_in_flight.set()
        answer.wait(60)

    fake_twilio.before_answer = accepted_then_hold
    worker = await _worker_process(app, fake_twilio, KOINONIA_SMS_SEND_CONCURRENCY=str(window))
    try:
        _body, deliveries = await _message(client, church_a.headers, members=members)
        in_flight = await asyncio.to_thread(window_in_flight.wait, 120)
        if not in_flight and worker.returncode is None:
            worker.kill()
        assert in_flight, (await worker.communicate())[1].decode(errors="replace")[-2000:]
        worker.kill()  # SIGKILL while the first window is at the provider
        await worker.wait()
    finally:
        fake_twilio.before_answer = None
        answer.set()
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    ids = [d.id for d in deliveries]
    by_key = {delivery_idempotency_key(d.id): d.id for d in deliveries}
    called = {by_key[k] for k in arrived}
    assert len(arrived) == len(called) == window
    status = {d.id: d.status for d in await Delivery.filter(id__in=ids)}
    assert {i for i, s in status.items() if s == DeliveryStatus.SENDING} == called
    assert {i for i, s in status.items() if s == DeliveryStatus.QUEUED} == set(ids) - called

    # The job's retry (SAQ re-queues the dead worker's job) sends the rest, once each.
    rerun = await send_deliveries(step.worker.context, delivery_ids=[str(i) for i in ids])
    assert (rerun["claimed"], rerun.get("sent")) == (members - window, members - window)
    assert (await send_deliveries(step.worker.context, delivery_ids=[str(i) for i in ids]))[
        "claimed"
    ] == 0

    # The calls in flight become ``unknown``, then ``sent`` by their status callbacks.
    later = datetime.now(UTC) + stale_claim_age(settings) + timedelta(seconds=1)
    await store.mark_stale_claims_unknown(later - stale_claim_age(settings), later)
    status = {d.id: d.status for d in await Delivery.filter(id__in=ids)}
    assert {i for i, s in status.items() if s == DeliveryStatus.UNKNOWN} == called
    sids = {m["to"]: m["sid"] for m in fake_twilio.accepted}
    for d in deliveries:
        if d.id in called:
            response = await post_webhook(
                client,
                f"/api/webhooks/sms/status?deliveryId={d.id}",
                {"MessageSid": sids[d.phone], "MessageStatus": "sent"},
            )
            assert response.status_code == 204
    assert {d.status for d in await Delivery.filter(id__in=ids)} == {DeliveryStatus.SENT}
    assert await step.run_until_idle() == 0
    assert fake_twilio.calls_per_delivery() == dict.fromkeys(by_key, 1)


async def test_provider_timing_out_after_accepting_ends_unknown_and_is_not_called_again(
    client, church_a, make_worker, fake_twilio, settings, redis
):
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=FROM_NUMBER,
        base_url=fake_twilio.base_url,
        timeout=0.3,
    )
    answer = threading.Event()
    fake_twilio.before_answer = lambda _request: answer.wait(5)  # accepted, then hangs
    try:
        step = await make_worker(provider)
        _body, [delivery] = await _message(client, church_a.headers)

        assert await step.run_next()
        stored = await Delivery.get(id=delivery.id)
        assert stored.status == DeliveryStatus.UNKNOWN and "SocketTimeoutError" in stored.last_error
        answer.set()

        # No retry job; the lookup (Twilio's Messages list) finds the text.
        assert await step.run_until_idle() == 0
        outcome = await settle_in_doubt(settings, provider, step.queue, redis)
        assert outcome["found"] >= 1
        stored = await Delivery.get(id=delivery.id)
        assert stored.status == DeliveryStatus.SENT
        assert stored.provider_message_id == fake_twilio.accepted[0]["sid"]
        assert fake_twilio.calls_per_delivery() == {delivery_idempotency_key(delivery.id): 1}
    finally:
        answer.set()
        await provider.aclose()


async def test_database_gone_after_the_send_never_sends_again(
    client, church_a, make_worker, redis, settings, monkeypatch
):
    step = await make_worker()
    _body, [delivery] = await _message(client, church_a.headers)
    real_record = store.record_outcomes
    failures = 0

    async def database_gone(*args, **kwargs):
        nonlocal failures
        failures += 1
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    monkeypatch.setattr(store, "record_outcomes", database_gone)
    monkeypatch.setattr(delivery_jobs, "RECORD_RETRY_SECONDS", 0)
    assert await step.run_next()  # the send worked; every result write failed
    assert failures == delivery_jobs.RECORD_ATTEMPTS
    job = await step.job(_key([delivery]))
    assert job.status == Status.QUEUED  # SAQ retries the job ...
    monkeypatch.setattr(store, "record_outcomes", real_record)
    await step.fast_forward(_key([delivery]))
    assert await step.run_next()  # ... which claims nothing: the row is not queued
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENDING

    later = datetime.now(UTC) + stale_claim_age(settings) + timedelta(seconds=1)
    outcome = await settle_in_doubt(
        settings, step.worker.context["provider"], None, redis, now=later
    )
    assert outcome["stale"] >= 1 and outcome["found"] >= 1
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT
    assert await _calls(redis, [delivery]) == [1]


async def test_failed_callback_during_the_send_is_not_overwritten_by_sent(
    client, church_a, make_worker, redis, webhook_settings
):
    provider = PausingProvider(redis)
    step = await make_worker(provider)
    message, [delivery] = await _message(client, church_a.headers)
    running = asyncio.create_task(step.run_next())
    await asyncio.wait_for(provider.entered.wait(), 5)

    response = await post_webhook(
        client,
        f"/api/webhooks/sms/status?deliveryId={delivery.id}",
        {"MessageSid": "SM" + uuid.uuid4().hex, "MessageStatus": "failed", "ErrorCode": "30003"},
    )
    assert response.status_code == 204
    provider.gate.set()
    await running

    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.FAILED and "30003" in stored.last_error
    assert (await Message.get(id=message["id"])).status == "failed"


async def test_member_deleted_after_the_message_was_recorded_is_not_texted(
    client, church_a, make_worker, redis
):
    step = await make_worker()
    _body, [gone, kept] = await _message(client, church_a.headers, members=2)
    deleted = await client.delete(f"/api/members/{gone.member_id}", headers=church_a.headers)
    assert deleted.status_code == 204

    assert await step.run_until_idle() == 1

    assert await _calls(redis, [gone, kept]) == [0, 1]
    assert (await Delivery.get(id=gone.id)).status == DeliveryStatus.FAILED
    assert (await Delivery.get(id=gone.id)).last_error == store.OPTED_OUT_ERROR


async def test_log_provider_keeps_numbers_and_bodies_out_of_the_log(redis, caplog):
    caplog.set_level(logging.DEBUG, logger="koinonia.delivery.sms.log")
    await LogProvider(redis).send("+14155550123", "Secret prayer request", "delivery-x")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "+14155550123" not in text and "Secret prayer request" not in text
    assert all(r.levelno < logging.INFO for r in caplog.records)


# --- sweeps ------------------------------------------------------------------------------


async def test_stalled_sweep_reads_queued_rows_through_its_index(settings):
    connection = await asyncpg.connect(settings.migration_url)
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(
                row[0]
                for row in await connection.fetch(
                    "EXPLAIN " + store._STALLED, datetime.now(UTC), 10
                )
            )
    finally:
        await connection.close()
    assert "delivery_queued_due_idx" in plan


async def test_unresolved_unknown_is_reported_and_resent_only_when_an_operator_confirms(
    client, church_a, operator, make_worker, redis, settings
):
    step = await make_worker()
    message, [delivery] = await _message(client, church_a.headers)
    long_ago = datetime.now(UTC) - timedelta(seconds=settings.sms_unknown_resolve_seconds + 60)
    await Delivery.filter(id=delivery.id).update(
        status=DeliveryStatus.UNKNOWN, claimed_at=long_ago, last_error="ReadTimeout"
    )
    await Message.filter(id=message["id"]).update(status="sent")

    detail = await (
        await client.get(f"/api/messages/{message['id']}", headers=church_a.headers)
    ).get_json()
    assert detail["deliveryCounts"]["unknown"] == 1
    listed = await (
        await client.get("/api/admin/deliveries/unknown", headers=operator.headers)
    ).get_json()
    assert str(delivery.id) in [row["id"] for row in listed["data"]]
    forbidden = await client.get("/api/admin/deliveries/unknown", headers=church_a.headers)
    assert forbidden.status_code == 403

    unconfirmed = await client.post(
        "/api/admin/deliveries/unknown/resend",
        json={"deliveryIds": [str(delivery.id)], "confirm": False},
        headers=operator.headers,
    )
    assert unconfirmed.status_code == 422
    assert [d["field"] for d in (await unconfirmed.get_json())["error"]["details"]] == ["confirm"]
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.UNKNOWN

    confirmed = await client.post(
        "/api/admin/deliveries/unknown/resend",
        json={"deliveryIds": [str(delivery.id)], "confirm": True},
        headers=operator.headers,
    )
    assert (await confirmed.get_json())["resent"] == [str(delivery.id)]
    assert await step.run_until_idle() == 1
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT
    assert await _calls(redis, [delivery]) == [1]


async def test_a_cancelled_job_requeues_the_sends_it_never_started_in_a_job_of_their_own(
    client, church_a, make_worker, redis, settings
):
    step = await make_worker()
    provider = PausingProvider(redis)
    ctx = {
        **step.worker.context,
        "provider": provider,
        "settings": settings.model_copy(update={"sms_send_concurrency": 1}),
    }
    _body, deliveries = await _message(client, church_a.headers, members=3)
    chunk = [str(d.id) for d in deliveries]

    running = asyncio.create_task(send_deliveries(ctx, delivery_ids=chunk))
    await asyncio.wait_for(provider.entered.wait(), 5)  # one send in flight, two waiting
    running.cancel()  # SAQ's timeout, an abort by its sweep, or a shutdown
    with pytest.raises(asyncio.CancelledError):
        await running

    stored = {d.id: d for d in await Delivery.filter(id__in=[d.id for d in deliveries])}
    in_flight = [d for d in deliveries if stored[d.id].status == DeliveryStatus.SENDING]
    waiting = [d for d in deliveries if stored[d.id].status == DeliveryStatus.QUEUED]
    assert (len(in_flight), len(waiting)) == (1, 2)
    # The two never handed to the provider have a job again and go out once.
    [retry_key] = await _scheduled_retry_keys(step)
    await step.fast_forward(retry_key)
    assert await step.run_next()
    assert await _calls(redis, waiting) == [1, 1]
    assert await _calls(redis, in_flight) == [0]  # it stays in doubt, for the sweep
