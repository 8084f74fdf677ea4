"""SMS consent: the carriers' keywords, a member's opt-in changes and their history.

Every change of ``Member.opt_in_sms`` goes through ``set_opt_in`` (or, for imports, the
import's own statement, which writes the same events), so the history on
``GET /api/members/<id>/consent`` is complete: who or what changed it, when, and how.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from koinonia.errors import NotFound
from koinonia.models.core import Church, ConsentEvent, ConsentSource, Member


class KeywordAction(enum.StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"


# The carriers' (CTIA) standard keywords; Twilio honours the same ones on its numbers.
KEYWORDS: dict[str, KeywordAction] = {
    **dict.fromkeys(
        ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"), KeywordAction.STOP
    ),
    **dict.fromkeys(("START", "YES", "UNSTOP"), KeywordAction.START),
    **dict.fromkeys(("HELP", "INFO"), KeywordAction.HELP),
}

DEFAULT_HELP_TEXT = (
    "{church}: texts from your church. Reply STOP to stop receiving them, START to receive "
    "them again. Msg & data rates may apply."
)
MAX_HELP_TEXT = 320  # two SMS segments


def keyword_of(body: str) -> str | None:
    """The keyword a text is, whatever its case and whitespace (" Stop\\n", "s top"); None
    when the text is anything else (a keyword inside a sentence is not one)."""
    word = "".join(body.split()).upper()
    return word if word in KEYWORDS else None


def help_text(church: Church) -> str:
    return church.sms_help_text or DEFAULT_HELP_TEXT.format(church=church.name)


async def set_opt_in(
    member_id: uuid.UUID,
    church_id: uuid.UUID,
    opted_in: bool,
    *,
    source: ConsentSource,
    changed_by_id: uuid.UUID | None = None,
    keyword: str | None = None,
    reference: str | None = None,
) -> bool:
    """Set the member's opt-in and keep the change; False (and nothing kept) when it was
    already so. Call inside the caller's transaction: the change and its event commit
    together. The conditional UPDATE makes two concurrent STOPs keep one event."""
    now = datetime.now(UTC)
    changed = await Member.filter(
        id=member_id, church_id=church_id, opt_in_sms=not opted_in
    ).update(opt_in_sms=opted_in, updated_at=now)
    if not changed:
        return False
    await ConsentEvent.create(
        church_id=church_id,
        member_id=member_id,
        opted_in=opted_in,
        source=source,
        changed_by_id=changed_by_id,
        keyword=keyword,
        reference=reference,
        created_at=now,
    )
    return True


async def record_initial(
    member: Member, *, source: ConsentSource, changed_by_id: uuid.UUID | None = None
) -> None:
    """A new member's first consent (inside the transaction that created the member)."""
    await ConsentEvent.create(
        church_id=member.church_id,  # type: ignore[attr-defined]
        member_id=member.id,
        opted_in=member.opt_in_sms,
        source=source,
        changed_by_id=changed_by_id,
    )


def event_json(event: ConsentEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "optedIn": event.opted_in,
        "source": str(event.source),
        "changedBy": str(event.changed_by_id) if event.changed_by_id else None,  # type: ignore[attr-defined]
        "keyword": event.keyword,
        "reference": event.reference,
        "createdAt": event.created_at.isoformat(),
    }


async def history(church_id: uuid.UUID, member_id: uuid.UUID) -> list[dict[str, Any]]:
    """The member's consent changes, oldest first (404 for another church's member)."""
    if not await Member.exists(id=member_id, church_id=church_id):
        raise NotFound("Member not found")
    events = await ConsentEvent.filter(church_id=church_id, member_id=member_id).order_by(
        "created_at", "id"
    )
    return [event_json(e) for e in events]
