"""The SAQ worker's wiring: its jobs, the cron jobs that run under locks, start-up and stop.

``run_worker(settings)`` is what ``koinonia worker`` runs. The delivery lifecycle itself
(the send job, the sweeps) is in ``koinonia.delivery``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from saq import CronJob, Worker
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from saq.types import Context

from koinonia.db import close_db, init_db
from koinonia.delivery import send_message, store
from koinonia.delivery.jobs import (
    ProviderSlots,
    provider_slots,
    send_deliveries,
    settle_in_doubt,
)
from koinonia.delivery.sms import SmsProvider, build_provider
from koinonia.metrics import WorkerMetrics, start_worker_metrics_server
from koinonia.services import phone_links, recurring, scheduled
from koinonia.services import queue as queue_service
from koinonia.settings import Settings
from koinonia.stores.client import create_redis
from koinonia.stores.locks import LockService

if TYPE_CHECKING:
    from tortoise.context import TortoiseContext

log = logging.getLogger(__name__)


class WorkerContext(Context, total=False):
    """SAQ's job context with what ``build_worker``'s start-up puts in it."""

    settings: Settings
    metrics: WorkerMetrics
    db: TortoiseContext
    redis: Redis
    provider: SmsProvider
    provider_slots: ProviderSlots | None
    locks: LockService
    sender: send_message.Sender


RECURRING_CRON = "* * * * *"
PHONE_LINK_CRON = "*/5 * * * *"
IN_DOUBT_CRON = "* * * * *"
RECURRING_PERIOD_SECONDS = 60
SCHEDULED_CRON = "* * * * *"
SCHEDULED_PERIOD_SECONDS = 60
PHONE_LINK_PERIOD_SECONDS = 300
IN_DOUBT_PERIOD_SECONDS = 60


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


async def recurring_messages(ctx: WorkerContext) -> dict[str, Any]:
    locks: LockService = ctx["locks"]
    sent: list[str] = []

    async def work() -> None:
        sent.extend(
            await recurring.run_due(
                now=datetime.now(UTC),
                sender=ctx["sender"],
            )
        )

    ran = await run_once_per_cycle(
        locks, "recurring-messages", RECURRING_PERIOD_SECONDS, work, metrics=ctx.get("metrics")
    )
    return {"ran": ran, "messages": sent}


async def scheduled_messages(ctx: WorkerContext) -> dict[str, Any]:
    """Send the scheduled messages that are due (services/scheduled.py: each once)."""
    locks: LockService = ctx["locks"]
    sent: list[str] = []

    async def work() -> None:
        sent.extend(await scheduled.run_due(now=datetime.now(UTC), sender=ctx["sender"]))

    ran = await run_once_per_cycle(
        locks, "scheduled-messages", SCHEDULED_PERIOD_SECONDS, work, metrics=ctx.get("metrics")
    )
    return {"ran": ran, "messages": sent}


async def phone_link_recovery(ctx: WorkerContext) -> dict[str, Any]:
    locks: LockService = ctx["locks"]
    outcome: dict[str, int] = {}

    async def work() -> None:
        outcome.update(await phone_links.recover(ctx["provider"], ctx["settings"]))

    ran = await run_once_per_cycle(
        locks, "phone-link-recovery", PHONE_LINK_PERIOD_SECONDS, work, metrics=ctx.get("metrics")
    )
    return {"ran": ran, **outcome}


async def link_phone_number(ctx: WorkerContext, *, number_id: str) -> dict[str, Any]:
    """Link a number just added (``services/phone_links.py``); the cron retries a failure."""
    status = await phone_links.link_by_id(ctx["provider"], uuid.UUID(number_id), ctx["settings"])
    return {"status": status}


def stalled_sweep_cron(period_seconds: int) -> str:
    """The stalled sweep's cron (croniter; a sixth field is seconds): every
    ``sms_stalled_after_seconds``, minute 2 of each period when it is whole minutes, so that
    the default (every 5 minutes) is offset from the phone-link job's."""
    if period_seconds < 60:
        return f"* * * * * */{period_seconds}"
    minutes = period_seconds // 60
    return f"{2 % minutes}-59/{minutes} * * * *"


async def requeue_stalled_deliveries(ctx: WorkerContext) -> dict[str, Any]:
    """Enqueue deliveries still ``queued`` long after they were due.

    That happens when Redis failed between the database commit and the enqueue (the API
    answers 202 anyway: the message is recorded). A second job for a delivery whose job is
    still waiting would claim nothing (delivery/store.py), so this cannot text twice.
    """
    locks: LockService = ctx["locks"]
    period_seconds = ctx["settings"].sms_stalled_after_seconds
    outcome: dict[str, int] = {}

    async def work() -> None:
        ids = await store.stalled_queued(datetime.now(UTC) - timedelta(seconds=period_seconds))
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
        period_seconds,
        work,
        metrics=ctx.get("metrics"),
    )
    return {"ran": ran, **outcome}


async def settle_deliveries_in_doubt(ctx: WorkerContext) -> dict[str, Any]:
    """Stale claims to ``unknown``, and ``unknown`` settled by the provider's evidence."""
    locks: LockService = ctx["locks"]
    outcome: dict[str, int] = {}

    async def work() -> None:
        outcome.update(
            await settle_in_doubt(ctx["settings"], ctx["provider"], ctx["queue"], ctx["redis"])
        )

    ran = await run_once_per_cycle(
        locks,
        "settle-deliveries-in-doubt",
        IN_DOUBT_PERIOD_SECONDS,
        work,
        metrics=ctx.get("metrics"),
    )
    return {"ran": ran, **outcome}


# --- worker ----------------------------------------------------------------------------------


async def after_process(ctx: WorkerContext) -> None:
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

    async def startup(ctx: WorkerContext) -> None:
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
        ctx["provider_slots"] = provider_slots(settings)
        ctx["locks"] = LockService(ctx["redis"])
        ctx["sender"] = send_message.Sender(
            queue,
            settings,
            queue_service.QueueHeadroom(queue.redis, settings.queue_memory_high_watermark),
        )

    async def shutdown(ctx: WorkerContext) -> None:
        if not manage_resources:
            return
        await ctx["provider"].aclose()
        await ctx["redis"].aclose()
        await close_db(ctx.get("db"))

    options: dict[str, Any] = {
        "concurrency": settings.worker_concurrency,
        "cron_jobs": [
            CronJob(recurring_messages, cron=RECURRING_CRON, timeout=55),
            CronJob(scheduled_messages, cron=SCHEDULED_CRON, timeout=55),
            CronJob(phone_link_recovery, cron=PHONE_LINK_CRON, timeout=240),
            CronJob(
                requeue_stalled_deliveries,
                cron=stalled_sweep_cron(settings.sms_stalled_after_seconds),
                timeout=240,
            ),
            CronJob(settle_deliveries_in_doubt, cron=IN_DOUBT_CRON, timeout=55),
        ],
        "startup": startup,
        "shutdown": shutdown,
        "after_process": after_process,
        # SIGTERM: running jobs get this long to finish, then are cancelled and re-queued.
        "shutdown_grace_period_s": settings.worker_shutdown_grace_seconds,
        # A bounded dequeue lets idle job slots notice the stop at once.
        "dequeue_timeout": 1.0,
        # Sweep twice per delivery-job heartbeat: a killed worker's chunk is queued again
        # within seconds (SAQ's default sweeps once a minute).
        "timers": {"sweep": queue_service.DELIVERY_JOB_HEARTBEAT_SECONDS // 2},
    }
    options.update(worker_options)
    return GracefulWorker(queue, functions=[send_deliveries, link_phone_number], **options)


def worker_main(settings: Settings) -> None:
    """``koinonia worker``: run_worker on the event loop the settings name (``event_loop``:
    uvloop by default, as for the API)."""
    loop_factory = None
    if settings.event_loop == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run_worker(settings))


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
