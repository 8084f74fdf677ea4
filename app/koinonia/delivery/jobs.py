"""The send job (one chunk of deliveries per SAQ job) and the sweeps that settle what a fault
left behind: stale claims, ``unknown`` deliveries, ``queued`` ones whose job was lost.

Jobs run at least once (SAQ retries a failed job, its sweep re-queues a job whose worker
died, and can re-queue a LIVE job whose record still says queued, saq #277). None of that can
text anyone twice: a job calls the provider only for the rows its own claim statement
returned (``store.claim``), and only ``queued`` rows can be claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from saq.job import Job
from saq.queue.redis import RedisQueue

from koinonia.delivery import store
from koinonia.delivery.sms import (
    STATUS_CALLBACK_PATH,
    PermanentSmsError,
    SmsError,
    SmsProvider,
    TransientSmsError,
)
from koinonia.models.messaging import DeliveryStatus
from koinonia.services import queue as queue_service
from koinonia.settings import Settings
from koinonia.stores import events

log = logging.getLogger(__name__)

# Seconds between the job's heartbeats; SAQ re-queues a job silent for longer than
# queue_service.DELIVERY_JOB_HEARTBEAT_SECONDS, and the worker sweeps that often.
HEARTBEAT_INTERVAL_SECONDS = queue_service.DELIVERY_JOB_HEARTBEAT_SECONDS / 3
# A result write that fails (database restarting) is tried again this many times, spaced
# out, before the job gives up and leaves the rows to the stale-claim sweep.
RECORD_ATTEMPTS = 4
RECORD_RETRY_SECONDS = 1.0
UNKNOWN_LOOKUP_BATCH = 200


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


def max_attempts(settings: Settings) -> int:
    return settings.sms_max_retries + 1


def stale_claim_age(settings: Settings) -> timedelta:
    """A claim older than this has no live holder: SAQ cancels a job at its timeout."""
    return timedelta(
        seconds=settings.sms_job_timeout_seconds + 2 * queue_service.DELIVERY_JOB_HEARTBEAT_SECONDS
    )


async def _call_provider(
    provider: SmsProvider, settings: Settings, delivery: store.ClaimedDelivery, now: datetime
) -> store.Outcome:
    """One provider call, and what it means for the delivery (sms/base.py names the rule)."""
    try:
        provider_message_id = await provider.send(
            delivery.phone,
            delivery.content,
            idempotency_key=delivery_idempotency_key(delivery.id),
            status_callback_url=status_callback_url(settings, delivery.id),
            from_number=delivery.from_number,
        )
    except PermanentSmsError as exc:
        return store.Outcome(delivery.id, DeliveryStatus.FAILED, error=str(exc))
    except TransientSmsError as exc:
        if delivery.attempt >= max_attempts(settings):
            return store.Outcome(
                delivery.id,
                DeliveryStatus.FAILED,
                error=f"{exc} (attempt {delivery.attempt} of {max_attempts(settings)})",
            )
        delay = retry_delay(
            delivery.attempt, settings.sms_retry_delay_seconds, settings.sms_retry_jitter
        )
        return store.Outcome(
            delivery.id,
            DeliveryStatus.QUEUED,
            error=str(exc),
            next_attempt_at=now + timedelta(seconds=delay),
        )
    except Exception as exc:
        # UnknownOutcomeSmsError, and anything a provider did not classify (a Redis error of
        # the log provider, a bug): the request may have reached the provider, so only
        # evidence may settle it.
        return store.Outcome(
            delivery.id, DeliveryStatus.UNKNOWN, error=f"{exc.__class__.__name__}: {exc}"
        )
    return store.Outcome(delivery.id, DeliveryStatus.SENT, provider_message_id=provider_message_id)


@contextlib.asynccontextmanager
async def heartbeat(job: Job | None) -> AsyncIterator[None]:
    """Touch the job while it runs, so SAQ's sweep re-queues it within seconds of its worker
    dying (and not, as without a heartbeat, only at its timeout)."""
    if job is None or not job.heartbeat:
        yield
        return

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)
            try:
                await job.update()
            except (RedisError, OSError):
                log.warning("could not touch job %s", job.key)

    task = asyncio.create_task(beat(), name="delivery-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _record(token: uuid.UUID, outcomes: list[store.Outcome]) -> list[store.Changed]:
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            return await store.record_outcomes(token, outcomes, datetime.now(UTC))
        except Exception as exc:  # asyncpg, Tortoise and OSError: no narrower common type
            if attempt == RECORD_ATTEMPTS:
                log.error(
                    "could not record %d provider answers (%s); the stale-claim sweep will",
                    len(outcomes),
                    exc.__class__.__name__,
                )
                raise
            await asyncio.sleep(RECORD_RETRY_SECONDS * attempt)
    raise AssertionError("unreachable")


async def publish_changes(redis: Redis | None, changed: list[store.Changed]) -> None:
    """One event per church for a batch of status changes."""
    if redis is None or not changed:
        return
    by_church: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for change in changed:
        by_church[change.church_id].append(
            {
                "messageId": str(change.message_id),
                "deliveryId": str(change.id),
                "memberId": str(change.member_id) if change.member_id else None,
                "status": str(change.status),
            }
        )
    for church_id, deliveries in by_church.items():
        await events.publish(
            redis, church_id, {"type": "deliveries.status", "deliveries": deliveries}
        )


async def _enqueue_retries(
    queue: RedisQueue | None, settings: Settings, outcomes: list[store.Outcome]
) -> None:
    """One scheduled job per retry time for the deliveries that go back to ``queued``; if
    Redis fails now, the stalled sweep finds them (they are due, and queued)."""
    due: dict[datetime, list[uuid.UUID]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.status == DeliveryStatus.QUEUED and outcome.next_attempt_at is not None:
            due[outcome.next_attempt_at].append(outcome.delivery_id)
    if queue is None or not due:
        return
    try:
        for at, ids in due.items():
            await queue_service.enqueue_deliveries(queue, settings, ids, scheduled=at)
    except (RedisError, OSError):
        log.warning("could not enqueue %d retries; the stalled sweep will", len(outcomes))


async def _record_then_enqueue(
    ctx: dict[str, Any], token: uuid.UUID, outcomes: list[store.Outcome]
) -> None:
    await _record(token, outcomes)
    await _enqueue_retries(ctx.get("queue"), ctx["settings"], outcomes)


async def send_deliveries(ctx: dict[str, Any], *, delivery_ids: list[str]) -> dict[str, Any]:
    """Claim the chunk's queued deliveries, call the provider once for each (at most
    ``sms_send_concurrency`` at a time), record every answer in one statement."""
    job: Job | None = ctx.get("job")
    settings: Settings = ctx["settings"]
    provider: SmsProvider = ctx["provider"]
    redis: Redis | None = ctx.get("redis")
    token = uuid.uuid4()
    claimed = await store.claim([uuid.UUID(str(i)) for i in delivery_ids], token, datetime.now(UTC))
    refused = [c for c in claimed if c.status == DeliveryStatus.FAILED]
    to_send = [c for c in claimed if c.status == DeliveryStatus.SENDING]
    outcomes: dict[uuid.UUID, store.Outcome] = {}
    started: set[uuid.UUID] = set()
    slots = asyncio.Semaphore(settings.sms_send_concurrency)

    async def send_one(delivery: store.ClaimedDelivery) -> None:
        async with slots:
            started.add(delivery.id)
            outcomes[delivery.id] = await _call_provider(
                provider, settings, delivery, datetime.now(UTC)
            )

    changed: list[store.Changed] = []
    async with heartbeat(job):
        try:
            await asyncio.gather(*(send_one(d) for d in to_send))
        except BaseException:
            # Cancelled (job timeout, an abort by SAQ's sweep, shutdown): the answers we have
            # are recorded; a row never handed to the provider waits again, in a job of its
            # own (the job's own retry may already have run and claimed nothing); a row whose
            # call was in flight stays ``sending`` and becomes ``unknown``.
            now = datetime.now(UTC)
            for delivery in to_send:
                if delivery.id not in started:
                    outcomes[delivery.id] = store.Outcome(
                        delivery.id, DeliveryStatus.QUEUED, next_attempt_at=now
                    )
            await asyncio.shield(_record_then_enqueue(ctx, token, list(outcomes.values())))
            raise
        changed = await _record(token, list(outcomes.values()))
    changed += [
        store.Changed(c.id, c.message_id, c.church_id, c.member_id, DeliveryStatus.FAILED)
        for c in refused
    ]
    await store.finish_messages(c.message_id for c in claimed)
    await publish_changes(redis, changed)
    await _enqueue_retries(ctx.get("queue"), settings, list(outcomes.values()))
    counts: dict[str, int] = defaultdict(int)
    for outcome in outcomes.values():
        counts[str(outcome.status)] += 1
    return {"claimed": len(claimed), "optedOut": len(refused), **counts}


# --- sweeps ------------------------------------------------------------------------------


async def settle_in_doubt(
    settings: Settings,
    provider: SmsProvider,
    queue: RedisQueue | None,
    redis: Redis | None,
    *,
    now: datetime | None = None,
) -> dict[str, int]:
    """Stale claims become ``unknown``; each ``unknown`` still within the resolve bound is
    looked up at the provider: found → ``sent``; proven absent → ``queued`` again (sent once,
    later); otherwise it stays ``unknown`` and is reported once past the bound."""
    now = now or datetime.now(UTC)
    stale = await store.mark_stale_claims_unknown(now - stale_claim_age(settings), now)
    bound = now - timedelta(seconds=settings.sms_unknown_resolve_seconds)
    in_doubt = await store.unknown_deliveries(bound, now, UNKNOWN_LOOKUP_BATCH)
    changed: list[store.Changed] = list(stale)
    absent: list[uuid.UUID] = []
    found = 0
    for delivery in in_doubt:
        try:
            provider_message_id = await provider.find_sent(
                delivery.phone,
                delivery.content,
                delivery_idempotency_key(delivery.id),
                delivery.claimed_at,
            )
        except (SmsError, OSError, RedisError) as exc:
            log.warning("lookup of delivery %s failed: %s", delivery.id, exc)
            continue
        if provider_message_id is not None:
            settled = await store.settle_unknown_as_sent(delivery.id, provider_message_id, now)
            found += len(settled)
            changed += settled
        elif provider.absence_is_evidence:
            absent.append(delivery.id)
    requeued = await store.requeue_unknown(
        absent, now, "the provider has no record of the call: sent again"
    )
    changed += requeued
    await store.finish_messages(c.message_id for c in changed)
    await publish_changes(redis, changed)
    if requeued and queue is not None:
        try:
            await queue_service.enqueue_deliveries(queue, settings, [c.id for c in requeued])
        except (RedisError, OSError):
            log.warning("could not enqueue %d deliveries; the stalled sweep will", len(requeued))
    unresolved = await store.count_unresolved(bound)
    if unresolved:
        log.warning(
            "%d deliveries still unknown after %ss: see /api/admin/deliveries/unknown",
            unresolved,
            settings.sms_unknown_resolve_seconds,
        )
    return {
        "stale": len(stale),
        "found": found,
        "requeued": len(requeued),
        "unresolved": unresolved,
    }
