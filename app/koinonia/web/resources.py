"""The messaging half's per-process resources in the app: job queue, lock service, event hub.

Opened by ``start`` and closed by ``stop``, both called from the app's lifespan (``app.py``),
into the typed fields of ``AppState``; nothing lives at module level. The accessors raise
outside the lifespan instead of handing a route ``None``.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from saq.queue.redis import RedisQueue

from koinonia.delivery import send_message
from koinonia.metrics import Metrics
from koinonia.services import queue as queue_service
from koinonia.stores.events import EventHub
from koinonia.stores.locks import LockService
from koinonia.web.state import AppState, get_state

log = logging.getLogger(__name__)

T = TypeVar("T")


async def start(state: AppState, metrics: Metrics | None = None) -> None:
    sms_queue = queue_service.create_queue(state.settings)
    await sms_queue.connect()
    state.sms_queue = sms_queue
    state.queue_headroom = queue_service.QueueHeadroom(
        sms_queue.redis, state.settings.queue_memory_high_watermark
    )
    state.locks = LockService(state.require_redis())
    state.events = EventHub(state.require_redis())
    if metrics is not None:
        depth = {
            kind: metrics.queue_depth.labels(queue=sms_queue.name, state=kind)
            for kind in ("queued", "active", "scheduled", "failed")
        }

        async def refresh_queue_depth() -> None:
            counts = await queue_service.queue_metrics(sms_queue)
            for kind, gauge in depth.items():
                gauge.set(counts[kind])

        metrics.add_scrape_hook(refresh_queue_depth)


async def stop(state: AppState) -> None:
    hub, state.events = state.events, None
    if hub is not None:
        await hub.stop()
    sms_queue, state.sms_queue = state.sms_queue, None
    if sms_queue is not None:
        await sms_queue.disconnect()
    state.locks = state.queue_headroom = None


def _started(resource: T | None, name: str) -> T:
    if resource is None:
        raise RuntimeError(f"{name} not started (outside the app lifespan?)")
    return resource


def sms_queue() -> RedisQueue:
    return _started(get_state().sms_queue, "job queue")


def locks() -> LockService:
    return _started(get_state().locks, "lock service")


def event_hub() -> EventHub:
    return _started(get_state().events, "event hub")


def queue_headroom() -> queue_service.QueueHeadroom:
    return _started(get_state().queue_headroom, "queue headroom")


def sender() -> send_message.Sender:
    """What ``send_message`` needs, from this process's resources."""
    state = get_state()
    return send_message.Sender(sms_queue(), state.settings, queue_headroom())
