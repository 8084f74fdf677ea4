"""What operators see and decide about deliveries no evidence settled."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from koinonia.delivery import send_message, store
from koinonia.settings import Settings

UNRESOLVED_LIST_LIMIT = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def unresolved(settings: Settings, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """``unknown`` deliveries claimed longer ago than the resolve bound, oldest first."""
    now = now or datetime.now(UTC)
    bound = now - timedelta(seconds=settings.sms_unknown_resolve_seconds)
    rows = await store.unknown_deliveries(_EPOCH, bound, UNRESOLVED_LIST_LIMIT)
    return [
        {
            "id": str(r.id),
            "messageId": str(r.message_id),
            "churchId": str(r.church_id),
            "claimedAt": r.claimed_at.isoformat(),
            "lastError": r.last_error,
        }
        for r in rows
    ]


async def resend(sender: send_message.Sender, delivery_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """An operator's confirmed resend: ``unknown`` ones wait again and are enqueued."""
    requeued = await store.requeue_unknown(
        delivery_ids, datetime.now(UTC), "resent by an operator after an unknown outcome"
    )
    ids = [c.id for c in requeued]
    await send_message.enqueue(sender, ids)
    return ids
