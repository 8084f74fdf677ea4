"""Sending a message, the one way every sender goes: the messages route, conversation
replies and recurring runs.

1. Refuse while the queue's Redis is at its memory high-water mark (503 ``queue_full``,
   nothing recorded), so the workers keep room to drain it.
2. Record the message and one ``queued`` delivery per opted-in recipient (one statement).
3. Enqueue the deliveries that still wait, in chunks. If Redis fails now, the message is
   recorded anyway and the stalled sweep enqueues its deliveries later. Steps 2 and 3 finish
   even if the sender is cancelled meanwhile (a client that went away).

A repeat with the same idempotency key records nothing and enqueues only deliveries still
``queued`` (the first request may have died between its commit and its enqueue).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from redis.exceptions import RedisError
from saq.queue.redis import RedisQueue

from koinonia.delivery import messaging
from koinonia.errors import QueueFull
from koinonia.models.messaging import TargetType
from koinonia.services import queue as queue_service
from koinonia.settings import Settings

log = logging.getLogger(__name__)

# What a refused sender is told to wait: workers drain thousands of deliveries a minute.
QUEUE_FULL_RETRY_AFTER_SECONDS = 60

# The record-then-enqueue tasks still running (send_message says why they are tasks).
_recording: set[asyncio.Task[messaging.RecordedMessage]] = set()


@dataclass(frozen=True)
class Sender:
    """The process's queue, its settings and its view of the queue's memory."""

    queue: RedisQueue
    settings: Settings
    headroom: queue_service.QueueHeadroom


async def refuse_if_queue_full(headroom: queue_service.QueueHeadroom) -> None:
    """Raises QueueFull while the queue's Redis is at its memory high-water mark. If Redis
    cannot be asked, the message goes ahead: its enqueue then fails like any Redis outage,
    and the stalled-delivery sweep enqueues it later."""
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


async def enqueue(sender: Sender, delivery_ids: Iterable[uuid.UUID]) -> None:
    """Enqueue after the commit; if Redis fails now, the deliveries stay ``queued`` in the
    database and the worker's stalled-delivery sweep enqueues them later."""
    ids = list(delivery_ids)
    if not ids:
        return
    try:
        await queue_service.enqueue_deliveries(sender.queue, sender.settings, ids)
    except (RedisError, OSError):
        log.exception("could not enqueue %d deliveries; the stalled sweep will", len(ids))


async def send_message(
    sender: Sender,
    *,
    church_id: uuid.UUID,
    created_by_id: uuid.UUID | None,
    content: str,
    target_type: TargetType,
    target_ids: list[str],
    idempotency_key: str | None,
) -> messaging.RecordedMessage:
    await refuse_if_queue_full(sender.headroom)

    async def record_then_enqueue() -> messaging.RecordedMessage:
        recorded = await messaging.record_message(
            church_id=church_id,
            created_by_id=created_by_id,
            content=content,
            target_type=target_type,
            target_ids=target_ids,
            idempotency_key=idempotency_key,
        )
        await enqueue(sender, recorded.waiting_ids)
        return recorded

    # Recording and enqueueing finish together even when the caller is cancelled (Quart
    # cancels a request's handler when its client goes away): cancelled between the commit
    # and the enqueue, the deliveries would wait for the stalled sweep, minutes. The task is
    # kept referenced until it ends (the event loop holds only weak references to tasks).
    task = asyncio.create_task(record_then_enqueue())
    _recording.add(task)
    task.add_done_callback(_recording.discard)
    return await asyncio.shield(task)
