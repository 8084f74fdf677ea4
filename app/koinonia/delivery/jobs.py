"""The send job (one chunk of deliveries per SAQ job) and the sweeps that settle what a fault
left behind: stale claims, ``unknown`` deliveries, ``queued`` ones whose job was lost.

Jobs run at least once (SAQ retries a failed job, its sweep re-queues a job whose worker
died, and can re-queue a LIVE job whose record still says queued, saq #277). None of that can
text anyone twice: a job calls the provider only for the rows its own claim statements
returned (``store.claim``), and only ``queued`` rows can be claimed. A job claims its chunk a
window at a time (``SendWindow``), so what a dead job leaves ``sending`` is only what was in
flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

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
T = TypeVar("T")

# Seconds between the job's heartbeats; SAQ re-queues a job silent for longer than
# queue_service.DELIVERY_JOB_HEARTBEAT_SECONDS, and the worker sweeps that often.
HEARTBEAT_INTERVAL_SECONDS = queue_service.DELIVERY_JOB_HEARTBEAT_SECONDS / 3
# A result write that fails (database restarting) is tried again this many times, spaced
# out, before the job gives up and leaves the rows to the stale-claim sweep.
RECORD_ATTEMPTS = 4
RECORD_RETRY_SECONDS = 1.0
UNKNOWN_LOOKUP_BATCH = 200
# A send window claims again once half its slots are free, or once a free slot has waited
# this long: slots do not idle long behind a half-window threshold when answers come in
# spread out, and claims stay batched when they come in together.
CLAIM_LINGER_SECONDS = 0.01


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
    return await _recording(
        outcomes, lambda: store.record_outcomes(token, outcomes, datetime.now(UTC))
    )


async def _recording(outcomes: list[store.Outcome], write: Callable[[], Awaitable[T]]) -> T:
    """``write`` (a statement that records ``outcomes``), tried again while it fails."""
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            return await write()
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


class ProviderSlots:
    """The provider calls one worker process may have in flight across all its jobs
    (``sms_worker_send_concurrency``; a provider limits concurrent requests per account, as
    Twilio does, and a fixed per-job window leaves slots idle while a job drains its last
    calls). Jobs take slots before they claim rows and give each back when its call ends;
    every window waiting for one is woken when one is given back.

    Written here rather than with ``asyncio.Semaphore``: a window takes as many slots as are
    free at once, without waiting, and claims exactly that many rows in one statement.
    """

    def __init__(self, total: int) -> None:
        self.free = total
        self.waiting: set[asyncio.Event] = set()

    def take(self, wanted: int) -> int:
        taken = min(wanted, self.free)
        self.free -= taken
        return taken

    def give(self, count: int = 1) -> None:
        self.free += count
        for event in self.waiting:
            event.set()


def provider_slots(settings: Settings) -> ProviderSlots | None:
    """The worker-wide bound, or None when it is unset (each job's window is the bound)."""
    total = settings.sms_worker_send_concurrency
    return ProviderSlots(total) if total else None


class SendWindow:
    """A chunk's sends, claimed a few at a time as slots free up (a sliding window of at most
    ``sms_send_concurrency`` calls): at any moment the chunk's ``sending`` rows are exactly
    those whose provider call may have started, so a worker killed mid-chunk leaves the rest
    ``queued``, to be sent once by the job's retry, never ``unknown``.

    A claim takes at least half the window (or whatever is left, or what is free after a
    slot idled ``CLAIM_LINGER_SECONDS``), and the same statement records the answers that
    came in since the last one (``store.record_then_claim``); the chunk's last answers are
    recorded on their own. A chunk of 100 at 50 at a time costs a handful of statements,
    not one per delivery. With the worker's ``ProviderSlots``, a window also never holds
    more calls than the worker has slots free.
    """

    def __init__(self, ctx: dict[str, Any], token: uuid.UUID, delivery_ids: list[uuid.UUID]):
        self.settings: Settings = ctx["settings"]
        self.provider: SmsProvider = ctx["provider"]
        self.token = token
        self.limit = self.settings.sms_send_concurrency
        self.refill = max(1, self.limit // 2)
        self.slots: ProviderSlots | None = ctx.get("provider_slots")
        self.pending: deque[uuid.UUID] = deque(delivery_ids)  # not claimed yet
        self.in_flight: dict[asyncio.Future[store.Outcome], store.ClaimedDelivery] = {}
        self.started: set[uuid.UUID] = set()  # handed to the provider (or being handed)
        self.answered: list[asyncio.Future[store.Outcome]] = []  # done, not yet collected
        self.answer = asyncio.Event()
        self.claiming: asyncio.Future[list[store.ClaimedDelivery]] | None = None
        self.unrecorded: list[store.Outcome] = []
        self.outcomes: list[store.Outcome] = []  # recorded
        self.changed: list[store.Changed] = []
        self.message_ids: set[uuid.UUID] = set()
        self.never_sent: list[uuid.UUID] = []  # claimed, then given back by ``stop``
        self.claimed = 0
        self.refused = 0

    async def run(self) -> None:
        if self.slots is not None:
            self.slots.waiting.add(self.answer)
        try:
            await self._run()
        finally:
            if self.slots is not None:
                self.slots.waiting.discard(self.answer)

    def _free(self) -> int:
        free = self.limit - len(self.in_flight)
        return free if self.slots is None else min(free, self.slots.free)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        free_since: float | None = None  # when a slot last went idle with rows to claim
        while self.pending or self.in_flight:
            free = self._free()
            if not free:
                # Every slot is taken (the window's, or the worker's by other jobs): nothing
                # to claim until one is given back, which wakes this window.
                free_since = None
            lingered = free_since is not None and loop.time() - free_since >= CLAIM_LINGER_SECONDS
            if self.pending and (free >= min(self.refill, len(self.pending)) or lingered):
                await self._claim_and_start(free)
                free_since = None
                continue
            if self.pending and free and free_since is None:
                free_since = loop.time()
            if not self.answered:
                # Woken by the next answer (not asyncio.wait over every call in flight: that
                # is a callback per call each time, quadratic in the window).
                self.answer.clear()
                linger = (
                    None
                    if free_since is None
                    else max(0.0, free_since + CLAIM_LINGER_SECONDS - loop.time())
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(linger):
                        await self.answer.wait()
            for call in self.answered:
                del self.in_flight[call]
                self.unrecorded.append(call.result())
            self.answered.clear()
            # While rows wait, the next claim records these answers in its statement.
            if not self.pending and (not self.in_flight or len(self.unrecorded) >= self.refill):
                await self._record()

    async def _claim_and_start(self, free: int) -> None:
        """Claim the next ``free`` rows and start their calls; the answers that came in
        since the last statement are recorded by the same statement."""
        wanted = min(free, len(self.pending))
        # Slots are taken before the statement, so two jobs claiming at once cannot both
        # count the same free slots.
        held = wanted if self.slots is None else self.slots.take(wanted)
        batch = [self.pending.popleft() for _ in range(held)]
        # Shielded: if the job is cancelled meanwhile, ``put_back`` still learns what the
        # statement did.
        self.claiming = asyncio.ensure_future(self._record_then_claim(batch))
        try:
            claimed = await asyncio.shield(self.claiming)
        except BaseException:
            self._give_slots(held)
            raise
        self.claiming = None
        calls = 0
        for delivery in claimed:
            self._take(delivery)
            if delivery.status == DeliveryStatus.SENDING:
                call = asyncio.ensure_future(self._send(delivery))
                self.in_flight[call] = delivery
                call.add_done_callback(self._answered)
                calls += 1
        self._give_slots(held - calls)  # rows refused, or no longer queued

    def _give_slots(self, count: int) -> None:
        if self.slots is not None and count:
            self.slots.give(count)

    async def _record_then_claim(self, batch: list[uuid.UUID]) -> list[store.ClaimedDelivery]:
        outcomes = list(self.unrecorded)
        if not outcomes:
            return await store.claim(batch, self.token, datetime.now(UTC))
        try:
            recorded, claimed = await _recording(
                outcomes,
                lambda: store.record_then_claim(self.token, outcomes, batch, datetime.now(UTC)),
            )
        except Exception:
            # Every attempt failed: the rows stay ``sending`` for the stale-claim sweep.
            del self.unrecorded[: len(outcomes)]
            raise
        self._recorded(outcomes, recorded)
        return claimed

    def _recorded(self, outcomes: list[store.Outcome], changed: list[store.Changed]) -> None:
        self.changed += changed
        self.outcomes += outcomes
        del self.unrecorded[: len(outcomes)]

    def _take(self, delivery: store.ClaimedDelivery) -> None:
        self.claimed += 1
        self.message_ids.add(delivery.message_id)
        if delivery.status == DeliveryStatus.FAILED:  # opted out or deleted: never texted
            self.refused += 1
            self.changed.append(
                store.Changed(
                    delivery.id,
                    delivery.message_id,
                    delivery.church_id,
                    delivery.member_id,
                    DeliveryStatus.FAILED,
                )
            )

    def _answered(self, call: asyncio.Future[store.Outcome]) -> None:
        self._give_slots(1)  # the call has ended, answered or cancelled
        if not call.cancelled():
            self.answered.append(call)
            self.answer.set()

    async def _send(self, delivery: store.ClaimedDelivery) -> store.Outcome:
        self.started.add(delivery.id)
        return await _call_provider(self.provider, self.settings, delivery, datetime.now(UTC))

    async def _record(self) -> None:
        if not self.unrecorded:
            return
        outcomes = list(self.unrecorded)
        try:
            changed = await _record(self.token, outcomes)
        except Exception:
            # Every attempt failed: the rows stay ``sending`` for the stale-claim sweep.
            del self.unrecorded[: len(outcomes)]
            raise
        self._recorded(outcomes, changed)

    def stop(self) -> None:
        """The job is stopping (cancelled or failed): no call that has not started will. A
        started call's row stays ``sending`` (it may have reached the provider); one never
        started goes back to ``queued``. Synchronous, so no call can start meanwhile."""
        now = datetime.now(UTC)
        for call, delivery in self.in_flight.items():
            if call.done() and not call.cancelled():
                self.unrecorded.append(call.result())
                continue
            call.cancel()
            if delivery.id not in self.started:
                self._give_back(delivery, now)
        self.in_flight.clear()

    def _give_back(self, delivery: store.ClaimedDelivery, now: datetime) -> None:
        self.never_sent.append(delivery.id)
        self.unrecorded.append(
            store.Outcome(delivery.id, DeliveryStatus.QUEUED, next_attempt_at=now)
        )

    async def put_back(self, queue: RedisQueue | None) -> None:
        """After ``stop``: record what is known, and give the rows never handed to the
        provider a job of their own (the job's own retry may already have run)."""
        now = datetime.now(UTC)
        if self.claiming is not None:
            try:
                claimed = await self.claiming
            except Exception:  # the claim itself failed: it claimed nothing
                claimed = []
            for delivery in claimed:
                self._take(delivery)
                if delivery.status == DeliveryStatus.SENDING:
                    self._give_back(delivery, now)
        again = [*self.pending, *self.never_sent]
        given_back = set(self.never_sent)
        retries = [o for o in [*self.outcomes, *self.unrecorded] if o.delivery_id not in given_back]
        try:
            await self._record()
        except Exception:
            log.warning("the stopped job's answers stay unrecorded; the stale-claim sweep will")
        await _enqueue_retries(queue, self.settings, retries)
        if again and queue is not None:
            try:
                await queue_service.enqueue_deliveries(queue, self.settings, again, scheduled=now)
            except (RedisError, OSError):
                log.warning("could not enqueue %d deliveries; the stalled sweep will", len(again))


async def send_deliveries(ctx: dict[str, Any], *, delivery_ids: list[str]) -> dict[str, Any]:
    """Send a chunk: claim its queued deliveries a window at a time, call the provider once
    for each (at most ``sms_send_concurrency`` at a time), record each window's answers in
    one statement; one message-completion check and one event per chunk."""
    job: Job | None = ctx.get("job")
    settings: Settings = ctx["settings"]
    redis: Redis | None = ctx.get("redis")
    window = SendWindow(ctx, uuid.uuid4(), [uuid.UUID(str(i)) for i in delivery_ids])
    async with heartbeat(job):
        try:
            await window.run()
        except BaseException:
            # Cancelled (job timeout, an abort by SAQ's sweep, shutdown) or a result that
            # could not be written: what is known is recorded, a call in flight stays
            # ``sending`` and becomes ``unknown``, the rest waits again.
            window.stop()
            await asyncio.shield(window.put_back(ctx.get("queue")))
            raise
    await store.finish_messages(window.message_ids)
    await publish_changes(redis, window.changed)
    await _enqueue_retries(ctx.get("queue"), settings, window.outcomes)
    counts: dict[str, int] = defaultdict(int)
    for outcome in window.outcomes:
        counts[str(outcome.status)] += 1
    return {"claimed": window.claimed, "optedOut": window.refused, **counts}


# --- sweeps ------------------------------------------------------------------------------


def _absence_proves_no_call(provider: SmsProvider, claimed_at: datetime, now: datetime) -> bool:
    """Whether the provider having no record of a delivery claimed at ``claimed_at`` proves
    it was never called. Not before its ``absence_is_evidence_after``: a call given up on
    (its answer lost in a partition) may still arrive, and a resend would then text twice."""
    after = provider.absence_is_evidence_after
    return after is not None and claimed_at <= now - timedelta(seconds=after)


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
    later); otherwise it stays ``unknown`` (looked up again at the next sweep) and is reported
    once past the bound."""
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
        elif _absence_proves_no_call(provider, delivery.claimed_at, now):
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
