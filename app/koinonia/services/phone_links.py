"""A church's own phone numbers: adding, listing and removing them, linking each to our
webhooks at the provider, retrying failed links, and texts to numbers no church has.

Adding a number records it ``pending`` and enqueues a link job (the worker holds the
provider); the job, or the recovery cron if the enqueue was lost, sets the number's SMS URL
to our inbound webhook and its status callback to our status webhook, and records
``linked`` or ``failed`` (with the provider's error). The recovery cron retries ``pending``
and ``failed`` numbers until ``phone_link_max_attempts``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from redis.exceptions import RedisError
from saq import Job
from saq.queue.redis import RedisQueue
from tortoise.exceptions import IntegrityError

from koinonia.delivery.sms import STATUS_CALLBACK_PATH, SmsError, SmsProvider
from koinonia.errors import Conflict, NotFound
from koinonia.models.core import Church
from koinonia.models.messaging import ChurchPhoneNumber, LinkStatus, UnroutedInboundSms
from koinonia.settings import Settings

log = logging.getLogger(__name__)

INBOUND_PATH = "/api/webhooks/sms/inbound"
LINK_PHONE_NUMBER = "link_phone_number"


def webhook_urls(settings: Settings) -> tuple[str, str]:
    """Where the provider sends a number's inbound texts, and its status callbacks."""
    base = settings.public_base_url.rstrip("/")
    return base + INBOUND_PATH, base + STATUS_CALLBACK_PATH


def e164(value: str) -> str:
    """``value`` if it is a valid number written in E.164; ValueError saying what is wrong."""
    if not value.startswith("+") or not value[1:].isdigit():
        raise ValueError("must be in E.164 form: + then country code and number, e.g. +14155550123")
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("is not a valid phone number (unknown country code or wrong length)")
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if formatted != value:
        raise ValueError(f"must be written in E.164 form: {formatted}")
    return value


def number_json(number: ChurchPhoneNumber) -> dict[str, Any]:
    return {
        "id": str(number.id),
        "churchId": str(number.church_id),  # type: ignore[attr-defined]
        "number": number.number,
        "status": str(number.status),
        "attempts": number.attempts,
        "lastError": number.last_error,
        "lastAttemptAt": number.last_attempt_at.isoformat() if number.last_attempt_at else None,
        "createdAt": number.created_at.isoformat(),
    }


def unrouted_json(text: UnroutedInboundSms) -> dict[str, Any]:
    return {
        "id": str(text.id),
        "to": text.to_number,
        "from": text.from_number,
        "body": text.body,
        "providerMessageId": text.provider_message_id,
        "receivedAt": text.received_at.isoformat(),
    }


# --- the church's numbers --------------------------------------------------------------------


async def add_number(queue: RedisQueue, church_id: uuid.UUID, number: str) -> ChurchPhoneNumber:
    """Record the number ``pending`` and enqueue its link (the cron links it if that fails)."""
    if not await Church.filter(id=church_id).exists():
        raise NotFound("Church not found")
    try:
        created = await ChurchPhoneNumber.create(church_id=church_id, number=number)
    except IntegrityError:
        raise Conflict("This number is already in use by a church", code="number_in_use") from None
    try:
        await queue.enqueue(
            Job(function=LINK_PHONE_NUMBER, kwargs={"number_id": str(created.id)}, retries=1)
        )
    except (RedisError, OSError):
        log.warning("could not enqueue the link of number %s; the recovery cron will", created.id)
    return created


async def list_numbers(
    church_id: uuid.UUID | None = None, limit: int = 200
) -> list[ChurchPhoneNumber]:
    """The church's numbers (every church's, for operators, with ``church_id`` None)."""
    query = (
        ChurchPhoneNumber.all()
        if church_id is None
        else ChurchPhoneNumber.filter(church_id=church_id)
    )
    return await query.order_by("created_at", "id").limit(limit)


async def remove_number(church_id: uuid.UUID, number_id: uuid.UUID) -> None:
    """Forget the number: texts to it are then unrouted (its webhook at the provider stays)."""
    if not await ChurchPhoneNumber.filter(id=number_id, church_id=church_id).delete():
        raise NotFound("Phone number not found")


# --- linking at the provider -----------------------------------------------------------------


async def link(provider: SmsProvider, number: ChurchPhoneNumber, settings: Settings) -> bool:
    inbound_url, status_url = webhook_urls(settings)
    try:
        await provider.link_number(number.number, inbound_url, status_url)
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


async def link_by_id(provider: SmsProvider, number_id: uuid.UUID, settings: Settings) -> str:
    """The link job's work: what became of the number (``removed`` if it is gone)."""
    number = await ChurchPhoneNumber.get_or_none(id=number_id)
    if number is None:
        return "removed"
    if number.status == LinkStatus.LINKED:
        return str(LinkStatus.LINKED)
    linked = await link(provider, number, settings)
    return str(LinkStatus.LINKED if linked else LinkStatus.FAILED)


async def recover(provider: SmsProvider, settings: Settings) -> dict[str, int]:
    """Retry every pending or failed link that has attempts left."""
    candidates = await ChurchPhoneNumber.filter(
        status__in=[LinkStatus.PENDING, LinkStatus.FAILED],
        attempts__lt=settings.phone_link_max_attempts,
    ).order_by("created_at")
    linked = 0
    for number in candidates:
        linked += await link(provider, number, settings)
    return {"linked": linked, "failed": len(candidates) - linked}


# --- texts to numbers no church has ----------------------------------------------------------


async def record_unrouted(
    *, to_number: str, from_number: str, body: str, message_sid: str | None
) -> None:
    try:
        await UnroutedInboundSms.create(
            to_number=to_number[:32],
            from_number=from_number[:32],
            body=body,
            provider_message_id=message_sid or None,
        )
    except IntegrityError:
        log.info("unrouted inbound message %s already recorded", message_sid)


async def list_unrouted(limit: int) -> list[UnroutedInboundSms]:
    return await UnroutedInboundSms.all().order_by("-received_at", "id").limit(limit)
