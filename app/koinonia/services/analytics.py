"""The church's summary figures: members, opt-ins, messages and deliveries by status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.functions import Count

from koinonia.models.core import Member
from koinonia.models.messaging import Delivery, Message
from koinonia.responses import json_bytes
from koinonia.stores.cache import ANALYTICS, CacheService, cache_key


async def _by_status(model: Any, church_id: uuid.UUID, since: datetime) -> dict[str, int]:
    rows = (
        await model.filter(church_id=church_id, created_at__gte=since)
        .annotate(n=Count("id"))
        .group_by("status")
        .values("status", "n")
    )
    return {str(row["status"]): int(row["n"]) for row in rows}


async def compute_summary(church_id: uuid.UUID, days: int) -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(days=days)
    total_members = await Member.filter(church_id=church_id).count()
    opted_in = await Member.filter(church_id=church_id, opt_in_sms=True).count()
    messages = await _by_status(Message, church_id, since)
    deliveries = await _by_status(Delivery, church_id, since)
    return {
        "window": {"days": days, "since": since.isoformat()},
        "members": {"total": total_members, "optedIn": opted_in},
        "messages": {"total": sum(messages.values()), "byStatus": messages},
        "deliveries": {"total": sum(deliveries.values()), "byStatus": deliveries},
        "generatedAt": datetime.now(UTC).isoformat(),
    }


async def summary_json(
    cache: CacheService | None, church_id: uuid.UUID, days: int
) -> tuple[str | bytes, str]:
    """The summary as the encoded response body, cached for
    ``KOINONIA_CACHE_ANALYTICS_TTL_SECONDS`` (5 min) per church and window; a hit is
    returned as stored."""

    async def load() -> dict[str, Any]:
        return await compute_summary(church_id, days)

    if cache is None:
        return json_bytes(await load()), "bypass"
    return await cache.get_or_load_json(
        ANALYTICS, church_id, cache_key(ANALYTICS, church_id, days), load
    )
