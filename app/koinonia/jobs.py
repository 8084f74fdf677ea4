"""Background jobs (SAQ): sending deliveries, and the cron jobs that run under locks.

``run_worker(settings)`` is what ``koinonia worker`` runs.  Jobs run at least once (a job of a
killed worker is swept and retried), so each one is safe to run twice: a delivery already
recorded as sent is not sent again, and the provider gets a per-delivery idempotency key for
the window between its answer and our database write.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from saq import CronJob, Worker
from saq.job import Job, Status
from saq.queue.redis import RedisQueue

from koinonia.db import close_db, init_db
from koinonia.locks import LockService
from koinonia.metrics import WorkerMetrics, start_worker_metrics_server
from koinonia.models.messaging import Delivery, DeliveryStatus
from koinonia.redis import create_redis
from koinonia.services import messaging, phone_links, recurring
from koinonia.services import queue as queue_service
from koinonia.settings import Settings
from koinonia.sms import (
    STATUS_CALLBACK_PATH,
    PermanentSmsError,
    SmsError,
    SmsProvider,
    build_provider,
)

log = logging.getLogger(__name__)

RECURRING_CRON = "* * * * *"
PHONE_LINK_CRON = "*/5 * * * *"
STALLED_CRON = "2-59/5 * * * *"  # every 5 minutes, offset from the phone-link job
STALLED_AFTER = timedelta(minutes=5)
RECURRING_PERIOD_SECONDS = 60
PHONE_LINK_PERIOD_SECONDS = 300


def retry_delay(
    attempt: int, base_delay: float, jitter: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before the retry that follows failed attempt number ``attempt`` (1-based).

    Exponential from ``base_delay`` (2 s, 4 s, 8 s, ...) plus up to ``jitter`` of it on top:
    the jitter spreads a burst of failures out without ever retrying sooner than the policy.
    """
    delay = base_delay * 2 ** max(attempt - 1, 0)
    return delay * (1 + jitter * rand())


def delivery_idempotency_key(delivery_id: uuid.UUID | str) -> str:
    return f"delivery-{delivery_id}"


def status_callback_url(settings: Settings, delivery_id: uuid.UUID | str) -> str:
    # The delivery id rides along so a callback that beats our own database write still
    # finds its delivery.
    return f"{settings.public_base_url.rstrip('/')}{STATUS_CALLBACK_PATH}?deliveryId={delivery_id}"


# --- send_delivery ---------------------------------------------------------------------------


async def send_delivery(ctx: dict[str, Any], *, delivery_id: str) -> dict[str, Any]:
    job: Job = ctx["job"]
    settings: Settings = ctx["settings"]
    provider: SmsProvider = ctx["provider"]
    redis: Redis | None = ctx.get("redis")

    delivery = await Delivery.get_or_none(id=delivery_id).select_related("message", "member")
    if delivery is None:
        return {"status": "missing"}
    if delivery.status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED):
        # At-least-once: this is a repeat of a job whose send was already recorded.
        return {"status": "already-sent", "providerMessageId": delivery.provider_message_id}
    if delivery.member is not None and not delivery.member.opt_in_sms:
        # The member opted out (STOP) between the message and this send.
        await messaging.mark_attempt_failed(
            delivery, "member opted out", job.attempts, final=True, redis=redis
        )
        return {"status": "opted-out"}

    try:
        provider_message_id = await provider.send(
            delivery.phone,
            delivery.message.content,
            idempotency_key=delivery_idempotency_key(delivery.id),
            status_callback_url=status_callback_url(settings, delivery.id),
        )
    except PermanentSmsError as exc:
        await messaging.mark_attempt_failed(
            delivery, str(exc), job.attempts, final=True, redis=redis
        )
        job.retries = job.attempts  # no retry can help: SAQ fails the job now
        raise
    except (SmsError, OSError, TimeoutError) as exc:
        final = job.attempts >= job.retries
        await messaging.mark_attempt_failed(
            delivery, str(exc), job.attempts, final=final, redis=redis
        )
        if not final:
            job.retry_backoff = False
            job.retry_delay = retry_delay(
                job.attempts, settings.sms_retry_delay_seconds, settings.sms_retry_jitter
            )
            log.info(
                "delivery %s attempt %s failed (%s); retry in %.1fs",
                delivery.id,
                job.attempts,
                exc,
                job.retry_delay,
            )
        raise
    await messaging.mark_sent(delivery, provider_message_id, job.attempts, redis)
    return {"status": "sent", "providerMessageId": provider_message_id}


# --- cron jobs under locks -------------------------------------------------------------------


async def run_once_per_cycle(
    locks: LockService,
    name: str,
    period_seconds: int,
    work: Callable[[], Any],
    *,
    metrics: WorkerMetrics | None = None,
) -> bool:
    """Run ``work`` at most once per period across every server.

    The lock is named after the cycle (``cron:<name>:<cycle number>``) and is NOT released
    when the work ends: it expires with the cycle, so a server whose clock or scheduler runs
    late cannot run the same cycle again after the first one finished.

    Once the lock is held, ``koinonia_cron_last_run_cycle{cron=name}`` is set to the cycle:
    two servers reporting the same cycle means it ran twice.
    """
    cycle = int(time.time() // period_seconds)
    lock_name = f"cron:{name}:{cycle}"
    lock = await locks.acquire(lock_name, ttl_ms=period_seconds * 1000)
    if lock is None:
        holder = await locks.holder_of(lock_name)
        log.info("skipping %s cycle %s: lock held by %s", name, cycle, holder or "another")
        return False
    if metrics is not None:
        metrics.cron_last_run_cycle.labels(cron=name).set(cycle)
    try:
        async with locks.extending(lock):
            await work()
    finally:
        # Keep the lock until the end of the cycle (at least a few seconds).
        remaining = (cycle + 1) * period_seconds - time.time()
        await locks.extend(lock, ttl_ms=max(int(remaining * 1000), 5_000))
    return True


async def recurring_messages(ctx: dict[str, Any]) -> dict[str, Any]:
    locks: LockService = ctx["locks"]
    sent: list[str] = []

    async def work() -> None:
        sent.extend(
            await recurring.run_due(
                now=datetime.now(UTC),
                enqueue=lambda ids: queue_service.enqueue_deliveries(
                    ctx["queue"], ctx["settings"], ids
                ),
            )
        )

    ran = await run_once_per_cycle(
        locks, "recurring-messages", RECURRING_PERIOD_SECONDS, work, metrics=ctx.get("metrics")
    )
    return {"ran": ran, "messages": sent}


async def phone_link_recovery(ctx: dict[str, Any]) -> dict[str, Any]:
    locks: LockService = ctx["locks"]
    outcome: dict[str, int] = {}

    async def work() -> None:
        outcome.update(
            await phone_links.recover(
                ctx["provider"],
                inbound_url=ctx["settings"].public_base_url.rstrip("/")
                + "/api/webhooks/sms/inbound",
                max_attempts=ctx["settings"].phone_link_max_attempts,
            )
        )

    ran = await run_once_per_cycle(
        locks, "phone-link-recovery", PHONE_LINK_PERIOD_SECONDS, work, metrics=ctx.get("metrics")
    )
    return {"ran": ran, **outcome}


async def requeue_stalled_deliveries(ctx: dict[str, Any]) -> dict[str, Any]:
    """Enqueue deliveries still ``queued`` long after their message was recorded.

    That happens when Redis failed between the database commit and the enqueue (the API
    answers 202 anyway: the message is recorded).  Deliveries whose job is still waiting are
    refused by SAQ (same job key), so this never creates a second job for a delivery.
    """
    locks: LockService = ctx["locks"]
    outcome: dict[str, int] = {}

    async def work() -> None:
        ids = await messaging.stalled_delivery_ids(datetime.now(UTC) - STALLED_AFTER)
        # Not onto a queue at its memory high-water mark (see Settings): they stay queued in
        # the database for a later cycle, and the workers keep Redis's last memory to drain.
        # The API's check (QueueHeadroom), read fresh: this runs once per cycle.
        headroom = queue_service.QueueHeadroom(
            ctx["queue"].redis, ctx["settings"].queue_memory_high_watermark, interval=0
        )
        ratio = await headroom.over_watermark() if ids else None
        if ratio is not None:
            log.warning(
                "%d stalled deliveries left for a later cycle: Redis at %d%% of maxmemory",
                len(ids),
                round(100 * ratio),
            )
            outcome["requeued"], outcome["deferred"] = 0, len(ids)
            return
        outcome["requeued"] = await queue_service.enqueue_deliveries(
            ctx["queue"], ctx["settings"], ids
        )

    ran = await run_once_per_cycle(
        locks,
        "requeue-stalled-deliveries",
        PHONE_LINK_PERIOD_SECONDS,
        work,
        metrics=ctx.get("metrics"),
    )
    return {"ran": ran, **outcome}


# --- worker ----------------------------------------------------------------------------------


async def after_process(ctx: dict[str, Any]) -> None:
    job: Job | None = ctx.get("job")
    if job is None:
        return
    metrics: WorkerMetrics | None = ctx.get("metrics")
    if metrics is not None:
        # complete / failed (finally) / queued again for a retry / aborted
        metrics.observe_job(job.function, job.status.value)
    if job.status == Status.FAILED:
        queue = job.get_queue()
        if isinstance(queue, RedisQueue):
            await queue_service.record_failed(queue, job)


class GracefulWorker(Worker):
    """SAQ's worker, stopping without waiting on its housekeeping loops.

    On stop SAQ waits up to the grace period for ALL its tasks, including housekeeping loops
    that sleep up to a minute between rounds; an idle worker would then always take the full
    grace period to exit.  Those loops hold no job, so they are cancelled first; the grace
    period is left to the job slots (running jobs finish, or are cancelled and re-queued).
    """

    async def stop(self) -> None:
        self.event.set()
        for task in list(self.tasks):
            if task.get_name() != "process":
                task.cancel()
                self.tasks.discard(task)
        await super().stop()


def build_worker(
    settings: Settings,
    queue: RedisQueue,
    *,
    provider: SmsProvider | None = None,
    redis: Redis | None = None,
    manage_resources: bool = True,
    metrics: WorkerMetrics | None = None,
    **worker_options: Any,
) -> Worker:
    """The SAQ worker with our jobs; ``manage_resources`` opens/closes DB, Redis, provider.

    Its metrics (``metrics``, or a new ``WorkerMetrics``) are in the jobs' ``ctx["metrics"]``.
    """
    worker_metrics = metrics or WorkerMetrics()

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        ctx["queue"] = queue
        ctx["metrics"] = worker_metrics
        if manage_resources:
            ctx["db"] = await init_db(settings)
            ctx["redis"] = create_redis(settings)
            ctx["provider"] = build_provider(settings, ctx["redis"])
        else:
            ctx["redis"] = redis
            ctx["provider"] = provider
        ctx["locks"] = LockService(ctx["redis"])

    async def shutdown(ctx: dict[str, Any]) -> None:
        if not manage_resources:
            return
        await ctx["provider"].aclose()
        await ctx["redis"].aclose()
        await close_db(ctx.get("db"))

    options: dict[str, Any] = {
        "concurrency": settings.worker_concurrency,
        "cron_jobs": [
            CronJob(recurring_messages, cron=RECURRING_CRON, timeout=55),
            CronJob(phone_link_recovery, cron=PHONE_LINK_CRON, timeout=240),
            CronJob(requeue_stalled_deliveries, cron=STALLED_CRON, timeout=240),
        ],
        "startup": startup,
        "shutdown": shutdown,
        "after_process": after_process,
        # SIGTERM: running jobs get this long to finish, then are cancelled and re-queued.
        "shutdown_grace_period_s": settings.worker_shutdown_grace_seconds,
        # A bounded dequeue lets idle job slots notice the stop at once.
        "dequeue_timeout": 1.0,
    }
    options.update(worker_options)
    return GracefulWorker(queue, functions=[send_delivery], **options)


async def run_worker(settings: Settings) -> None:
    """Run the SAQ worker and the cron jobs until SIGTERM/SIGINT (graceful, see build_worker)."""
    metrics = WorkerMetrics()
    server = None
    if settings.worker_metrics_bind:
        server, _thread = start_worker_metrics_server(settings.worker_metrics_bind, metrics)
    queue = queue_service.create_queue(settings)
    try:
        await queue.connect()
        worker = build_worker(settings, queue, metrics=metrics)
        try:
            await worker.start()
        finally:
            await queue.disconnect()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
