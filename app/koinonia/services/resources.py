"""The messaging half's per-process resources in the app: job queue, lock service, event hub.

Created by ``start`` (hooked to the app's start-up by the messages blueprint) and parked in
``AppState.extras``; nothing lives at module level.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from redis.exceptions import RedisError
from saq.queue.redis import RedisQueue

from koinonia.errors import QueueFull
from koinonia.locks import LockService
from koinonia.metrics import Metrics
from koinonia.services import queue as queue_service
from koinonia.services.events import EventHub
from koinonia.state import AppState, get_state

log = logging.getLogger(__name__)

QUEUE = "messaging.queue"
LOCKS = "messaging.locks"
EVENTS = "messaging.events"
HEADROOM = "messaging.headroom"
# What a refused sender is told to wait: workers drain thousands of deliveries a minute.
QUEUE_FULL_RETRY_AFTER_SECONDS = 60


async def start(state: AppState, metrics: Metrics | None = None) -> None:
    sms_queue = queue_service.create_queue(state.settings)
    await sms_queue.connect()
    state.extras[QUEUE] = sms_queue
    state.extras[HEADROOM] = queue_service.QueueHeadroom(
        sms_queue.redis, state.settings.queue_memory_high_watermark
    )
    state.extras[LOCKS] = LockService(state.require_redis())
    state.extras[EVENTS] = EventHub(state.require_redis())
    if metrics is not None:

        async def refresh_queue_depth() -> None:
            counts = await queue_service.queue_metrics(sms_queue)
            for kind in ("queued", "active", "scheduled", "failed"):
                metrics.queue_depth.labels(queue=sms_queue.name, state=kind).set(counts[kind])

        metrics.add_scrape_hook(refresh_queue_depth)


async def stop(state: AppState) -> None:
    hub: EventHub | None = state.extras.pop(EVENTS, None)
    if hub is not None:
        await hub.stop()
    sms_queue: RedisQueue | None = state.extras.pop(QUEUE, None)
    if sms_queue is not None:
        await sms_queue.disconnect()
    state.extras.pop(LOCKS, None)
    state.extras.pop(HEADROOM, None)


def sms_queue() -> RedisQueue:
    return get_state().extras[QUEUE]  # type: ignore[no-any-return]


def locks() -> LockService:
    return get_state().extras[LOCKS]  # type: ignore[no-any-return]


def event_hub() -> EventHub:
    return get_state().extras[EVENTS]  # type: ignore[no-any-return]


def queue_headroom() -> queue_service.QueueHeadroom:
    return get_state().extras[HEADROOM]  # type: ignore[no-any-return]


async def refuse_if_queue_full() -> None:
    """Raises QueueFull (503, nothing recorded) while the queue's Redis is at its memory
    high-water mark. If Redis cannot be asked, the message goes ahead: its enqueue then
    fails like any Redis outage, and the stalled-delivery sweep enqueues it later."""
    headroom = queue_headroom()
    try:
        ratio = await headroom.over_watermark()
    except (RedisError, OSError):
        log.warning("could not read the queue's Redis memory; accepting the message")
        return
    if ratio is None:
        return
    percent = round(100 * ratio)
    log.warning(
        "SMS queue full: Redis at %d%% of maxmemory (high-water mark %d%%); message refused",
        percent,
        round(100 * headroom.watermark),
    )
    raise QueueFull(
        QUEUE_FULL_RETRY_AFTER_SECONDS,
        f"The SMS queue is full (its store is at {percent}% of its memory limit) and is "
        "being sent out. Nothing was recorded: send the message again in a minute (the "
        "same Idempotency-Key is safe).",
    )


async def enqueue_deliveries(delivery_ids: Iterable[uuid.UUID]) -> None:
    """Enqueue after the commit; if Redis fails now, the deliveries stay ``queued`` in the
    database and the worker's stalled-delivery sweep enqueues them later."""
    ids = list(delivery_ids)
    if not ids:
        return
    try:
        await queue_service.enqueue_deliveries(sms_queue(), get_state().settings, ids)
    except (RedisError, OSError):
        log.exception("could not enqueue %d deliveries; the stalled sweep will", len(ids))
