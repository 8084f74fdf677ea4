"""Conversations: inbound texts (carriers' keywords first), listing, and replies through the
queue."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from koinonia.delivery import send_message
from koinonia.errors import Conflict, NotFound
from koinonia.models.core import Church, ConsentSource, Member
from koinonia.models.messaging import (
    MESSAGE_KEY_LENGTH,
    ChurchPhoneNumber,
    Conversation,
    ConversationMessage,
    Direction,
    TargetType,
)
from koinonia.services import consent, phone_links
from koinonia.stores import cache, events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundResult:
    handled: bool
    opt_change: bool | None = None  # False: opted out, True: opted in, None: unchanged
    conversation_id: uuid.UUID | None = None
    reply: str | None = None  # answered in the webhook's TwiML (HELP/INFO)


def reply_key(conversation_id: uuid.UUID, client_key: str) -> str:
    """The message's idempotency key for a reply: scoped to the conversation, so the same
    client key on another endpoint is another text. A client key may be 255 characters, as
    long as the column, so one that would not fit beside its scope is stored as its SHA-256
    (keys that fit keep their plain form, which earlier replies were recorded under)."""
    scoped = f"reply:{conversation_id}:{client_key}"
    if len(scoped) <= MESSAGE_KEY_LENGTH:
        return scoped
    return f"reply:{conversation_id}:sha256:{hashlib.sha256(client_key.encode()).hexdigest()}"


def normalise(number: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


async def _conversation_for(church_id: uuid.UUID, member_id: uuid.UUID) -> Conversation:
    conversation = await Conversation.get_or_none(church_id=church_id, member_id=member_id)
    if conversation is not None:
        return conversation
    try:
        async with in_transaction():
            return await Conversation.create(church_id=church_id, member_id=member_id)
    except IntegrityError:  # created concurrently by another request
        return await Conversation.get(church_id=church_id, member_id=member_id)


async def handle_inbound(
    *,
    from_number: str,
    to_number: str,
    body: str,
    message_sid: str | None,
    redis: Redis | None,
    page_cache: cache.CacheService | None = None,
) -> InboundResult:
    """Record an inbound text in the member's conversation. The carriers' keywords come
    first: STOP (and synonyms) opts the member out, START opts in, HELP/INFO is answered with
    the church's help text (``reply``, to anyone texting the church's number).

    A text to a number no church has is recorded for operators (``UnroutedInboundSms``);
    one from someone who is not a member of that church is logged and dropped. The provider's
    message id makes a redelivered webhook a no-op. ``page_cache``: this process's, so that
    an opt-in change drops its copies at once rather than when the bump's message comes.
    """
    keyword = consent.keyword_of(body)
    action = consent.KEYWORDS.get(keyword) if keyword else None
    sender, receiver = normalise(from_number), normalise(to_number)
    line = await ChurchPhoneNumber.get_or_none(number=receiver) if receiver else None
    if line is None:
        # Kept for operators (a number linked at the provider but not here, or removed),
        # never attached to a church.
        await phone_links.record_unrouted(
            to_number=to_number, from_number=from_number, body=body, message_sid=message_sid
        )
        log.info("inbound text to a number no church has recorded for operators")
        return InboundResult(handled=False)
    if sender is None:
        return InboundResult(handled=False)
    reply = None
    if action == consent.KeywordAction.HELP:
        reply = consent.help_text(await Church.get(id=line.church_id))
    member = await Member.get_or_none(church_id=line.church_id, phone=sender)
    if member is None:
        log.info("inbound text from non-member to %s dropped", receiver)
        return InboundResult(handled=False, reply=reply)

    wanted: bool | None = None
    if action == consent.KeywordAction.STOP:
        wanted = False
    elif action == consent.KeywordAction.START:
        wanted = True

    opt_change: bool | None = None
    conversation = await _conversation_for(line.church_id, member.id)
    now = datetime.now(UTC)
    try:
        async with in_transaction():
            entry = await ConversationMessage.create(
                conversation_id=conversation.id,
                direction=Direction.INBOUND,
                body=body,
                provider_message_id=message_sid or None,
            )
            await Conversation.filter(id=conversation.id).update(last_message_at=now)
            # Only with a newly recorded text: a redelivered (or replayed) old STOP/START
            # must not flip the opt-in the member has set since.
            if wanted is not None and await consent.set_opt_in(
                member.id,
                line.church_id,
                wanted,
                source=ConsentSource.KEYWORD,
                keyword=keyword,
                reference=message_sid or None,
            ):
                opt_change = wanted
    except IntegrityError:
        log.info("inbound message %s already recorded", message_sid)
        return InboundResult(handled=True, conversation_id=conversation.id, reply=reply)

    if opt_change is not None:
        # The member list and the analytics show the opt-in: their cached pages are stale.
        if page_cache is not None:
            await page_cache.invalidate_church(line.church_id, cache.MEMBERS, cache.ANALYTICS)
        elif redis is not None:
            await cache.bump_versions(redis, line.church_id, cache.MEMBERS, cache.ANALYTICS)
    if redis is not None:
        await events.publish(
            redis,
            line.church_id,
            {
                "type": "conversation.message",
                "conversationId": str(conversation.id),
                "memberId": str(member.id),
                "message": message_json(entry),
            },
        )
    return InboundResult(
        handled=True, opt_change=opt_change, conversation_id=conversation.id, reply=reply
    )


def message_json(entry: ConversationMessage) -> dict[str, Any]:
    return {
        "id": str(entry.id),
        "direction": str(entry.direction),
        "body": entry.body,
        "deliveryId": str(entry.delivery_id) if entry.delivery_id else None,
        "createdAt": entry.created_at.isoformat(),
    }


async def list_conversations(
    church_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    query = Conversation.filter(church_id=church_id)
    total = await query.count()
    rows = (
        await query.select_related("member")
        .order_by("-last_message_at", "-created_at", "id")
        .offset(offset)
        .limit(limit)
    )
    return [
        {
            "id": str(c.id),
            "member": {
                "id": str(c.member.id),
                "firstName": c.member.first_name,
                "lastName": c.member.last_name,
                "phone": c.member.phone,
                "optInSms": c.member.opt_in_sms,
            },
            "lastMessageAt": c.last_message_at.isoformat() if c.last_message_at else None,
            "createdAt": c.created_at.isoformat(),
        }
        for c in rows
    ], total


async def get_conversation(church_id: uuid.UUID, conversation_id: uuid.UUID) -> Conversation:
    conversation = await Conversation.get_or_none(id=conversation_id, church_id=church_id)
    if conversation is None:
        raise NotFound("Conversation not found")
    return conversation


async def messages_of(
    church_id: uuid.UUID, conversation_id: uuid.UUID, *, limit: int, offset: int
) -> list[dict[str, Any]]:
    conversation = await get_conversation(church_id, conversation_id)
    rows = (
        await ConversationMessage.filter(conversation_id=conversation.id)
        .order_by("created_at", "id")
        .offset(offset)
        .limit(limit)
    )
    return [message_json(r) for r in rows]


async def reply(
    sender: send_message.Sender,
    *,
    church_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_id: uuid.UUID,
    body: str,
    idempotency_key: str | None = None,
) -> tuple[ConversationMessage, bool]:
    """Queue a reply to the member: a one-recipient message sent like any other. Returns the
    conversation entry and False when it is the replay of an earlier request's reply."""
    conversation = await get_conversation(church_id, conversation_id)
    member = await Member.get(id=conversation.member_id)
    if not member.opt_in_sms:
        raise Conflict("The member has opted out of texts", code="member_opted_out")
    recorded = await send_message.send_message(
        sender,
        church_id=church_id,
        created_by_id=user_id,
        content=body,
        target_type=TargetType.MEMBERS,
        target_ids=[str(member.id)],
        idempotency_key=reply_key(conversation.id, idempotency_key) if idempotency_key else None,
    )
    if not recorded.created and recorded.delivery_ids:
        earlier = await ConversationMessage.get_or_none(delivery_id=recorded.delivery_ids[0])
        if earlier is not None:
            return earlier, False
    entry = await ConversationMessage.create(
        conversation_id=conversation.id,
        direction=Direction.OUTBOUND,
        body=body,
        delivery_id=recorded.delivery_ids[0] if recorded.delivery_ids else None,
    )
    await Conversation.filter(id=conversation.id).update(last_message_at=entry.created_at)
    return entry, recorded.created
