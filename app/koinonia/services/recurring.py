"""Recurring messages: CRUD for the API and the due-run used by the every-minute cron job."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from koinonia.delivery import messaging, send_message
from koinonia.errors import ApiError, NotFound, QueueFull, ValidationFailed
from koinonia.models.messaging import RecurringMessage, TargetType

log = logging.getLogger(__name__)


def next_run(schedule: str, after: datetime) -> datetime:
    """Next time the cron expression (UTC) fires strictly after ``after``."""
    return croniter(schedule, after.astimezone(UTC)).get_next(datetime).astimezone(UTC)


def validate_schedule(schedule: str) -> str:
    schedule = " ".join(schedule.split())
    # Five fields only: croniter also accepts a seconds field, which a minute cron cannot honour.
    if len(schedule.split(" ")) != 5 or not croniter.is_valid(schedule):
        raise ValidationFailed(
            "schedule must be a 5-field cron expression (UTC), e.g. '0 9 * * 0'",
            details=[{"field": "schedule", "message": "invalid cron expression", "type": "cron"}],
        )
    return schedule


async def _check_targets(church_id: uuid.UUID, target_type: TargetType, ids: list[str]) -> None:
    await messaging.resolve_recipients(church_id, target_type, ids)  # 404 on foreign/unknown ids


async def create(
    *,
    church_id: uuid.UUID,
    created_by_id: uuid.UUID | None,
    content: str,
    target_type: TargetType,
    target_ids: list[str],
    schedule: str,
    active: bool = True,
    now: datetime | None = None,
) -> RecurringMessage:
    schedule = validate_schedule(schedule)
    await _check_targets(church_id, target_type, target_ids)
    return await RecurringMessage.create(
        church_id=church_id,
        created_by_id=created_by_id,
        content=content,
        target_type=target_type,
        target_ids=[str(i) for i in target_ids],
        schedule=schedule,
        next_run_at=next_run(schedule, now or datetime.now(UTC)),
        active=active,
    )


async def get(church_id: uuid.UUID, recurring_id: uuid.UUID) -> RecurringMessage:
    item = await RecurringMessage.get_or_none(id=recurring_id, church_id=church_id)
    if item is None:
        raise NotFound("Recurring message not found")
    return item


async def list_for(church_id: uuid.UUID) -> list[RecurringMessage]:
    return await RecurringMessage.filter(church_id=church_id).order_by("next_run_at", "id")


async def update(
    church_id: uuid.UUID, recurring_id: uuid.UUID, changes: dict[str, Any]
) -> RecurringMessage:
    item = await get(church_id, recurring_id)
    if "schedule" in changes:
        item.schedule = validate_schedule(changes["schedule"])
        item.next_run_at = next_run(item.schedule, datetime.now(UTC))
    if "content" in changes:
        item.content = changes["content"]
    if "targetType" in changes or "targetIds" in changes:
        target_type = TargetType(changes.get("targetType", item.target_type))
        target_ids = [str(i) for i in changes.get("targetIds", item.target_ids)]
        await _check_targets(church_id, target_type, target_ids)
        item.target_type, item.target_ids = target_type, target_ids
    if "active" in changes:
        if changes["active"] and not item.active:
            item.next_run_at = next_run(item.schedule, datetime.now(UTC))
        item.active = bool(changes["active"])
    await item.save()
    return item


async def delete(church_id: uuid.UUID, recurring_id: uuid.UUID) -> None:
    item = await get(church_id, recurring_id)
    await item.delete()


def recurring_json(item: RecurringMessage) -> dict[str, Any]:
    return {
        "id": str(item.id),
        "content": item.content,
        "targetType": str(item.target_type),
        "targetIds": item.target_ids,
        "schedule": item.schedule,
        "nextRunAt": item.next_run_at.isoformat(),
        "lastRunAt": item.last_run_at.isoformat() if item.last_run_at else None,
        "active": item.active,
        "createdAt": item.created_at.isoformat(),
    }


async def run_due(*, now: datetime, sender: send_message.Sender) -> list[str]:
    """Send every due recurring message once; returns the ids of the messages created.

    Each run is recorded with an idempotency key naming the recurring message and the run
    time, so a run repeated after a crash (or by a second runner) finds the same message
    instead of texting everyone twice; only then does ``next_run_at`` move on. While the
    queue is full, the run waits (its ``next_run_at`` stays) for a later cycle.
    """
    created: list[str] = []
    due = await RecurringMessage.filter(active=True, next_run_at__lte=now).order_by("next_run_at")
    for item in due:
        run_at = item.next_run_at
        try:
            recorded = await send_message.send_message(
                sender,
                church_id=item.church_id,
                created_by_id=item.created_by_id,
                content=item.content,
                target_type=TargetType(item.target_type),
                target_ids=list(item.target_ids),
                idempotency_key=f"recurring:{item.id}:{run_at.isoformat()}",
            )
        except QueueFull:
            log.warning("recurring message %s waits: the SMS queue is full", item.id)
            continue
        except ApiError as exc:  # e.g. its group was deleted: skip this run, keep the schedule
            log.warning("recurring message %s not sent: %s", item.id, exc.message)
        else:
            if recorded.created:
                created.append(str(recorded.message.id))
        await RecurringMessage.filter(id=item.id, next_run_at=run_at).update(
            next_run_at=next_run(item.schedule, now), last_run_at=now
        )
    return created
