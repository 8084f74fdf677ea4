"""A church's own settings: its time zone (scheduled messages) and its HELP/INFO answer."""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from koinonia.errors import NotFound
from koinonia.models.core import Church
from koinonia.services import consent

# Files of the system's zoneinfo directory that are not zones of the tz database:
# "localtime" is the host's own setting, "Factory" a placeholder.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_ZONES


def zone_names() -> list[str]:
    """Every name ``validate_timezone`` accepts, sorted (the OpenAPI document's enum)."""
    return sorted(_zones())


def validate_timezone(name: str) -> str:
    """An IANA zone name (``America/Chicago``) or ValueError saying what is wanted."""
    if name not in _zones():
        raise ValueError(f"{name!r} is not an IANA time zone name, e.g. 'America/Chicago'")
    return name


async def get(church_id: uuid.UUID) -> Church:
    church = await Church.get_or_none(id=church_id)
    if church is None:
        raise NotFound("Church not found")
    return church


async def update(church_id: uuid.UUID, changes: dict[str, Any]) -> Church:
    """``timezone`` (validated by the caller's schema) and ``sms_help_text`` (None: the
    default text)."""
    church = await get(church_id)
    for name in ("timezone", "sms_help_text"):
        if name in changes:
            setattr(church, name, changes[name])
    await church.save(update_fields=[n for n in ("timezone", "sms_help_text") if n in changes])
    return church


def settings_json(church: Church) -> dict[str, Any]:
    return {
        "name": church.name,
        "timezone": church.timezone,
        "smsHelpText": church.sms_help_text,
        "effectiveSmsHelpText": consent.help_text(church),
    }
