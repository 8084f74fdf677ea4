"""Linking a church's phone number to our inbound webhook, and retrying failed links."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from koinonia.delivery.sms import SmsError, SmsProvider
from koinonia.models.messaging import ChurchPhoneNumber, LinkStatus

log = logging.getLogger(__name__)


async def link(provider: SmsProvider, number: ChurchPhoneNumber, inbound_url: str) -> bool:
    try:
        await provider.link_number(number.number, inbound_url)
    except (SmsError, OSError) as exc:
        await ChurchPhoneNumber.filter(id=number.id).update(
            status=LinkStatus.FAILED,
            attempts=number.attempts + 1,
            last_error=str(exc)[:2000],
            last_attempt_at=datetime.now(UTC),
        )
        log.warning("linking %s failed: %s", number.number, exc)
        return False
    await ChurchPhoneNumber.filter(id=number.id).update(
        status=LinkStatus.LINKED,
        attempts=number.attempts + 1,
        last_error=None,
        last_attempt_at=datetime.now(UTC),
    )
    return True


async def recover(provider: SmsProvider, *, inbound_url: str, max_attempts: int) -> dict[str, int]:
    """Retry every pending or failed link that has attempts left."""
    candidates = await ChurchPhoneNumber.filter(
        status__in=[LinkStatus.PENDING, LinkStatus.FAILED], attempts__lt=max_attempts
    ).order_by("created_at")
    linked = 0
    for number in candidates:
        linked += await link(provider, number, inbound_url)
    return {"linked": linked, "failed": len(candidates) - linked}
