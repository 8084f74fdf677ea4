"""Scheduled messages: one message at a set time, entered in the church's time zone.

    scheduled ──claim (cron)──▶ sending ──▶ sent | failed
        │                          │
        └──cancel──▶ cancelled     └──queue full──▶ scheduled (a later cycle)

The cron's claim and a cancel are both one conditional UPDATE of the same row from
``scheduled``: whichever commits first wins and the other changes nothing (the cron skips a
cancelled row; a cancel of a claimed one answers 409): cancelled or sent, never both. The send
is ``send_message`` with the idempotency key ``scheduled:<id>``: a run repeated after a crash
(the row left ``sending``), or a second runner, finds the message the first one recorded
instead of texting anyone twice. The cron runs it under its cycle lock (jobs.py) as well.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from koinonia.delivery import messaging, send_message
from koinonia.errors import ApiError, Conflict, NotFound, QueueFull, ValidationFailed
from koinonia.models.core import Church
from koinonia.models.messaging import ScheduledMessage, ScheduledStatus, TargetType

log = logging.getLogger(__name__)

MAX_AHEAD = timedelta(days=366)
DUE_BATCH = 500


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(
        message, details=[{"field": "sendAt", "message": message, "type": "send_at"}]
    )


def to_utc(send_at: datetime, zone_name: str) -> datetime:
    """A wall-clock time in the zone (or an instant, when it has an offset) as UTC."""
    try:
        if send_at.tzinfo is not None:
            return send_at.astimezone(UTC)
        zone = ZoneInfo(zone_name)
        instant = send_at.replace(tzinfo=zone).astimezone(UTC)
    except OverflowError:  # years 1 and 9999 near the edge of what datetime can hold
        raise _invalid(f"sendAt {send_at.isoformat()} is out of range") from None
    # A time the clocks skip (spring forward) does not come back the same way round.
    if instant.astimezone(zone).replace(tzinfo=None) != send_at:
        raise _invalid(
            f"{send_at.isoformat()} does not exist in {zone_name} (the clocks skip it); "
            "choose another time"
        )
    return instant


async def create(
    *,
    church_id: uuid.UUID,
    created_by_id: uuid.UUID | None,
    content: str,
    target_type: TargetType,
    target_ids: list[str],
    send_at: datetime,
    now: datetime | None = None,
) -> ScheduledMessage:
    church = await Church.get(id=church_id)
    when = to_utc(send_at, church.timezone)
    now = now or datetime.now(UTC)
    if when <= now:
        try:
            shown = f"{when.astimezone(ZoneInfo(church.timezone)).isoformat()} ({church.timezone})"
        except OverflowError:
            shown = when.isoformat()
        raise _invalid(f"sendAt {shown} has passed; choose a time in the future")
    if when > now + MAX_AHEAD:
        raise _invalid(f"sendAt may be at most {MAX_AHEAD.days} days ahead")
    await messaging.resolve_recipients(church_id, target_type, target_ids)  # 404 unknown ids
    return await ScheduledMessage.create(
        church_id=church_id,
        created_by_id=created_by_id,
        content=content,
        target_type=target_type,
        target_ids=[str(i) for i in target_ids],
        send_at=when,
        timezone=church.timezone,
    )


async def get(church_id: uuid.UUID, scheduled_id: uuid.UUID) -> ScheduledMessage:
    item = await ScheduledMessage.get_or_none(id=scheduled_id, church_id=church_id)
    if item is None:
        raise NotFound("Scheduled message not found")
    return item


async def list_for(
    church_id: uuid.UUID, status: ScheduledStatus | None, *, limit: int, offset: int
) -> tuple[list[ScheduledMessage], int]:
    query = ScheduledMessage.filter(church_id=church_id)
    if status is not None:
        query = query.filter(status=status)
    total = await query.count()
    items = await query.order_by("send_at", "id").offset(offset).limit(limit)
    return items, total


async def cancel(church_id: uuid.UUID, scheduled_id: uuid.UUID) -> ScheduledMessage:
    """Cancel unless the cron has claimed it (409 ``not_cancellable``); cancelling a
    cancelled message again answers it as it is."""
    cancelled = await ScheduledMessage.filter(
        id=scheduled_id, church_id=church_id, status=ScheduledStatus.SCHEDULED
    ).update(status=ScheduledStatus.CANCELLED, cancelled_at=datetime.now(UTC))
    item = await get(church_id, scheduled_id)
    if not cancelled and item.status != ScheduledStatus.CANCELLED:
        raise Conflict(
            f"The message is already {item.status}: it can no longer be cancelled",
            code="not_cancellable",
            details={"status": str(item.status)},
        )
    return item


def scheduled_json(item: ScheduledMessage) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(item.id),
        "content": item.content,
        "targetType": str(item.target_type),
        "targetIds": item.target_ids,
        "sendAt": item.send_at.astimezone(UTC).isoformat(),
        "sendAtLocal": item.send_at.astimezone(ZoneInfo(item.timezone)).isoformat(),
        "timezone": item.timezone,
        "status": str(item.status),
        "messageId": str(item.message_id) if item.message_id else None,  # type: ignore[attr-defined]
        "lastError": item.last_error,
        "createdBy": str(item.created_by_id) if item.created_by_id else None,  # type: ignore[attr-defined]
        "createdAt": item.created_at.isoformat(),
        "sentAt": iso(item.sent_at),
        "cancelledAt": iso(item.cancelled_at),
    }


# --- the minute cron ---------------------------------------------------------------------


async def claim(scheduled_id: uuid.UUID, now: datetime) -> bool:
    """Take a due message for sending; False when a cancel (or another runner) got there
    first. ``sending`` is claimable again: a run that stopped half way is finished later."""
    return bool(
        await ScheduledMessage.filter(
            id=scheduled_id,
            status__in=[ScheduledStatus.SCHEDULED, ScheduledStatus.SENDING],
            send_at__lte=now,
        ).update(status=ScheduledStatus.SENDING)
    )


async def run_due(*, now: datetime, sender: send_message.Sender) -> list[str]:
    """Send every due scheduled message once; returns the ids of the messages created."""
    created: list[str] = []
    due = (
        await ScheduledMessage.filter(
            status__in=[ScheduledStatus.SCHEDULED, ScheduledStatus.SENDING], send_at__lte=now
        )
        .order_by("send_at")
        .limit(DUE_BATCH)
    )
    for item in due:
        if not await claim(item.id, now):
            continue
        try:
            recorded = await send_message.send_message(
                sender,
                church_id=item.church_id,
                created_by_id=item.created_by_id,
                content=item.content,
                target_type=TargetType(item.target_type),
                target_ids=list(item.target_ids),
                idempotency_key=f"scheduled:{item.id}",
            )
        except QueueFull:
            log.warning("scheduled message %s waits: the SMS queue is full", item.id)
            await ScheduledMessage.filter(id=item.id, status=ScheduledStatus.SENDING).update(
                status=ScheduledStatus.SCHEDULED
            )
            continue
        except ApiError as exc:  # its group or members are gone
            log.warning("scheduled message %s not sent: %s", item.id, exc.message)
            await ScheduledMessage.filter(id=item.id, status=ScheduledStatus.SENDING).update(
                status=ScheduledStatus.FAILED, last_error=exc.message
            )
            continue
        await ScheduledMessage.filter(id=item.id, status=ScheduledStatus.SENDING).update(
            status=ScheduledStatus.SENT, message_id=recorded.message.id, sent_at=now
        )
        if recorded.created:
            created.append(str(recorded.message.id))
    return created
