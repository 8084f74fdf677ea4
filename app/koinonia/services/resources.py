"""The messaging half's per-process resources in the app: job queue, lock service, event hub.

Created by ``start`` (hooked to the app's start-up by the messages blueprint) and parked in
``AppState.extras``; nothing lives at module level.
"""

from __future__ import annotations

import logging

from saq.queue.redis import RedisQueue

from koinonia.delivery import send_message
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


def sender() -> send_message.Sender:
    """What ``send_message`` needs, from this process's resources."""
    state = get_state()
    return send_message.Sender(sms_queue(), state.settings, queue_headroom())
