"""The send_delivery job on a real SAQ worker: retries, backoff, permanent errors, idempotency,
failed jobs and their retry through the admin endpoint.  Twilio is the local fake server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from saq.job import Status

from koinonia.jobs import build_worker, delivery_idempotency_key, retry_delay
from koinonia.models.messaging import Delivery, DeliveryStatus
from koinonia.services import queue as queue_service
from koinonia.services.queue import SEND_DELIVERY, delivery_job_key, enqueue_deliveries
from tests.messaging_fixtures import StepWorker, create_member


async def _one_delivery(client, headers) -> tuple[dict, Delivery]:
    """POST a one-recipient message (create the worker first: it empties the queue)."""
    member = await create_member(client, headers)
    response = await client.post(
        "/api/messages",
        json={"content": "Retry me", "targetType": "members", "targetIds": [member["id"]]},
        headers=headers,
    )
    assert response.status_code == 202
    message = await response.get_json()
    delivery = await Delivery.get(message_id=message["id"])
    return message, delivery


def test_retry_delay_is_exponential_from_two_seconds_with_bounded_jitter():
    assert [retry_delay(n, 2.0, 0.1, rand=lambda: 0.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert [retry_delay(n, 2.0, 0.1, rand=lambda: 1.0) for n in (1, 2, 3)] == [2.2, 4.4, 8.8]


async def test_transient_failures_retry_three_times_with_backoff_then_send(
    client, church_a, make_worker, twilio_provider, fake_twilio, settings
):
    worker = await make_worker(twilio_provider)
    _message, delivery = await _one_delivery(client, church_a.headers)
    key = delivery_job_key(delivery.id)
    for _ in range(3):
        fake_twilio.fail_next(503, message="Service Unavailable")

    job = await worker.job(key)
    # SAQ counts the first attempt in ``retries``: 3 retries = 4 attempts.
    assert job.retries == settings.sms_max_retries + 1 == 4

    for attempt, base in enumerate((2.0, 4.0, 8.0), start=1):
        before = time.time()
        assert await worker.run_next()
        after = time.time()
        job = await worker.job(key)
        assert job.status == Status.QUEUED and job.attempts == attempt
        scheduled = await worker.scheduled_at(key)
        # Exactly the exponential delay, plus at most 10 % of jitter, never less.
        assert before + base <= scheduled <= after + base * 1.1
        stored = await Delivery.get(id=delivery.id)
        assert stored.status == DeliveryStatus.QUEUED
        assert stored.attempts == attempt
        assert "503" in stored.last_error
        # Not due yet: the worker finds nothing to do until the backoff has passed.
        assert not await worker.run_next()
        await worker.fast_forward(key)

    assert await worker.run_next()  # fourth attempt succeeds
    job = await worker.job(key)
    assert job.status == Status.COMPLETE and job.attempts == 4
    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.SENT
    assert stored.attempts == 4
    assert stored.provider_message_id and stored.last_error is None
    # Every attempt carried the same idempotency token, so Twilio could drop repeats.
    tokens = {r.headers["i-twilio-idempotency-token"] for r in fake_twilio.requests}
    assert tokens == {delivery_idempotency_key(delivery.id)}
    assert len(fake_twilio.requests) == 4


async def test_permanent_error_fails_at_once(
    client, church_a, make_worker, twilio_provider, fake_twilio
):
    worker = await make_worker(twilio_provider)
    message, delivery = await _one_delivery(client, church_a.headers)
    fake_twilio.fail_next(400, code=21211, message="The 'To' number is not a valid phone number.")

    assert await worker.run_next()

    job = await worker.job(delivery_job_key(delivery.id))
    assert job.status == Status.FAILED
    assert job.attempts == 1
    assert len(fake_twilio.requests) == 1
    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.FAILED
    assert "21211" in stored.last_error
    detail = await (
        await client.get(f"/api/messages/{message['id']}", headers=church_a.headers)
    ).get_json()
    assert detail["status"] == "failed"
    assert detail["deliveryCounts"]["failed"] == 1


async def test_repeated_job_after_success_does_not_text_twice(
    client, church_a, make_worker, twilio_provider, fake_twilio, settings
):
    worker = await make_worker(twilio_provider)
    _, delivery = await _one_delivery(client, church_a.headers)
    assert await worker.run_next()
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT

    # At-least-once delivery: the same job runs again (e.g. swept from a killed worker).
    await worker.queue.enqueue(
        "send_delivery", key=delivery_job_key(delivery.id), delivery_id=str(delivery.id)
    )
    assert await worker.run_next()
    assert (await worker.job(delivery_job_key(delivery.id))).result["status"] == "already-sent"
    assert len(fake_twilio.requests) == 1


async def test_send_lost_before_db_write_is_deduplicated_by_provider(
    client, church_a, make_worker, twilio_provider, fake_twilio
):
    worker = await make_worker(twilio_provider)
    _, delivery = await _one_delivery(client, church_a.headers)
    assert await worker.run_next()
    first_sid = (await Delivery.get(id=delivery.id)).provider_message_id

    # The worker died after Twilio accepted the send but before our write: the row still
    # says queued when the job runs again.
    await Delivery.filter(id=delivery.id).update(
        status=DeliveryStatus.QUEUED, provider_message_id=None
    )
    await worker.queue.enqueue(
        "send_delivery", key=delivery_job_key(delivery.id), delivery_id=str(delivery.id)
    )
    assert await worker.run_next()

    assert len(fake_twilio.requests) == 2  # asked twice ...
    assert len(fake_twilio.unique_sends()) == 1  # ... but one text, thanks to the token
    assert (await Delivery.get(id=delivery.id)).provider_message_id == first_sid


async def test_finally_failed_job_is_listed_and_retried_by_admin_endpoint(
    client, church_a, operator, make_worker, twilio_provider, fake_twilio
):
    worker = await make_worker(twilio_provider)
    _message, delivery = await _one_delivery(client, church_a.headers)
    key = delivery_job_key(delivery.id)
    for _ in range(4):
        fake_twilio.fail_next(500)
    for _ in range(3):
        assert await worker.run_next()
        await worker.fast_forward(key)
    assert await worker.run_next()
    job = await worker.job(key)
    assert job.status == Status.FAILED and job.attempts == 4
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.FAILED
    # Kept beyond SAQ's result TTL so operators can still see it.
    assert await worker.queue.redis.ttl(job.id) == -1

    failed = await (
        await client.get("/api/admin/queue/failed", headers=operator.headers)
    ).get_json()
    [listed] = [j for j in failed["data"] if j["id"] == key]
    assert listed["attempts"] == 4
    assert listed["function"] == "send_delivery"
    assert "500" in listed["error"]
    metrics = await (
        await client.get("/api/admin/queue/metrics", headers=operator.headers)
    ).get_json()
    assert metrics["failed"] >= 1

    retried = await client.post("/api/admin/queue/retry-failed", headers=operator.headers)
    assert retried.status_code == 200
    assert key in (await retried.get_json())["jobs"]
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.QUEUED
    job = await worker.job(key)
    assert job.status == Status.QUEUED and job.attempts == 0 and job.retries == 4

    assert await worker.run_next()  # the fake answers success now
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT
    failed = await (
        await client.get("/api/admin/queue/failed", headers=operator.headers)
    ).get_json()
    assert key not in [j["id"] for j in failed["data"]]


@pytest.mark.parametrize("path", ["/api/admin/queue/failed", "/api/admin/queue/metrics"])
async def test_queue_admin_is_for_operators_only(app, client, church_a, path):
    # A fresh client: ``client`` holds church_a's session cookie from registering.
    assert (await app.test_client().get(path)).status_code == 401
    assert (await client.get(path, headers=church_a.headers)).status_code == 403


class BlockingProvider:
    """A provider whose send waits until the test lets it finish."""

    name = "blocking"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, to, body, idempotency_key, status_callback_url=None) -> str:
        self.started.set()
        await self.release.wait()
        self.sent.append(to)
        return "BLOCKED" + idempotency_key

    async def link_number(self, number, inbound_url) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_graceful_stop_lets_a_running_send_finish(client, church_a, make_worker):
    provider = BlockingProvider()
    step = await make_worker(provider, shutdown_grace_period_s=10)
    _, delivery = await _one_delivery(client, church_a.headers)
    running = asyncio.create_task(step.worker.start())
    await asyncio.wait_for(provider.started.wait(), 10)

    stopping = asyncio.create_task(step.worker.stop())  # what SIGTERM triggers
    await asyncio.sleep(0.3)
    assert not stopping.done()  # waiting for the job in flight
    provider.release.set()
    await asyncio.wait_for(stopping, 10)
    await asyncio.wait_for(running, 10)

    assert (await step.job(delivery_job_key(delivery.id))).status == Status.COMPLETE
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT
    assert len(provider.sent) == 1


async def test_stop_past_the_grace_period_requeues_the_job(
    client, church_a, make_worker, redis, twilio_provider, fake_twilio
):
    provider = BlockingProvider()
    step = await make_worker(provider, shutdown_grace_period_s=0)
    _, delivery = await _one_delivery(client, church_a.headers)
    key = delivery_job_key(delivery.id)
    running = asyncio.create_task(step.worker.start())
    await asyncio.wait_for(provider.started.wait(), 10)

    await asyncio.wait_for(step.worker.stop(), 10)  # no grace: cancel the running job
    await asyncio.wait_for(running, 10)

    job = await step.job(key)
    assert job.status == Status.QUEUED  # re-queued, not lost
    assert provider.sent == []
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.QUEUED

    # The next worker (after the restart) sends it, once.
    fresh = StepWorker(
        worker=build_worker(
            step.worker.context["settings"],
            step.queue,
            provider=twilio_provider,
            redis=redis,
            manage_resources=False,
            cron_jobs=[],
        ),
        queue=step.queue,
    )
    for startup in fresh.worker.startup or []:
        await startup(fresh.worker.context)
    await fresh.fast_forward(key)
    assert await fresh.run_next()
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT
    assert len(fake_twilio.requests) == 1


async def test_job_of_a_killed_worker_is_swept_and_texts_once(
    client, church_a, make_worker, twilio_provider, fake_twilio
):
    step = await make_worker(twilio_provider)
    _, delivery = await _one_delivery(client, church_a.headers)
    key = delivery_job_key(delivery.id)
    # A worker takes the job, gets its text to Twilio, and is killed before recording it:
    # the job stays "active" with nobody working on it.
    job = await step.queue.dequeue(timeout=1)
    assert job is not None and job.key == key
    job.attempts, job.started = 1, int((time.time() - 120) * 1000)
    await job.update(status=Status.ACTIVE)
    await twilio_provider.send(delivery.phone, "Retry me", delivery_idempotency_key(delivery.id))

    # SAQ's sweep finds the job past its timeout and puts it back in the queue.
    assert step.queue.job_id(key) in await step.queue.sweep(abort=0.1)
    await step.fast_forward(key)
    assert await step.run_next()

    stored = await Delivery.get(id=delivery.id)
    assert stored.status == DeliveryStatus.SENT
    assert len(fake_twilio.requests) == 2
    assert len(fake_twilio.unique_sends()) == 1  # the member got one text


async def test_batched_enqueue_is_what_saq_enqueue_would_store(make_worker, settings, monkeypatch):
    # enqueue_many runs SAQ's enqueue script for a batch at once; SAQ must see plain jobs.
    monkeypatch.setattr(queue_service, "ENQUEUE_BATCH", 2)  # 5 jobs: three script calls
    step = await make_worker()
    ids = [uuid.uuid4() for _ in range(5)]
    already = await step.queue.enqueue(
        SEND_DELIVERY, key=delivery_job_key(ids[0]), delivery_id=str(ids[0])
    )
    assert already is not None

    # A key that is already waiting is refused, as by SAQ's own enqueue; the rest go in.
    assert await enqueue_deliveries(step.queue, settings, ids) == 4
    assert await enqueue_deliveries(step.queue, settings, ids) == 0
    assert await step.queue.count("queued") == 5
    job = await step.job(delivery_job_key(ids[1]))
    assert job.status == Status.QUEUED
    assert job.function == SEND_DELIVERY
    assert job.kwargs == {"delivery_id": str(ids[1])}
    assert job.retries == settings.sms_max_retries + 1
    assert job.timeout == settings.sms_job_timeout_seconds
    # A worker takes them in order (these deliveries do not exist: the job says so).
    assert await step.run_until_idle() == 5
    done = await step.job(delivery_job_key(ids[4]))
    assert done.status == Status.COMPLETE
    assert done.result == {"status": "missing"}
