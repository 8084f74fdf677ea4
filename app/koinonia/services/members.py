"""Members of a church: validation, queries and cache invalidation (all data access here)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import phonenumbers
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from koinonia.db import fetch_row
from koinonia.errors import Conflict, NotFound, ValidationFailed
from koinonia.models.core import ConsentSource, Member
from koinonia.responses import json_bytes
from koinonia.services import consent
from koinonia.stores.cache import MEMBERS, CacheService, cache_key

MAX_PAGE_SIZE = 100
# What a listing without a limit gets (the route's default).
DEFAULT_PAGE_SIZE = 50


def normalise_phone(raw: str, default_region: str) -> str:
    """E.164 (+15551234567) or ValidationFailed naming the field."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValidationFailed(
            "Invalid phone number",
            details=[{"field": "phone", "message": str(exc), "type": "phone"}],
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationFailed(
            "Invalid phone number",
            details=[{"field": "phone", "message": "not a valid number", "type": "phone"}],
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def member_json(member: Member) -> dict[str, Any]:
    # The member list writes the same in SQL (_page_sql); test_member_listing holds them equal.
    return {
        "id": str(member.id),
        "churchId": str(member.church_id),  # type: ignore[attr-defined]
        "firstName": member.first_name,
        "lastName": member.last_name,
        "phone": member.phone,
        "email": member.email,
        "optInSms": member.opt_in_sms,
        "createdAt": member.created_at.isoformat(),
        "updatedAt": member.updated_at.isoformat(),
    }


def encode_cursor(created_at: str, member_id: str) -> str:
    """The cursor after a member: its ``createdAt`` and ``id`` as the page shows them."""
    raw = f"{created_at}|{member_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, member_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        return datetime.fromisoformat(created), uuid.UUID(member_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "Invalid cursor",
            details=[{"field": "cursor", "message": "malformed", "type": "cursor"}],
        ) from None


def _utc_isoformat(column: str) -> str:
    """SQL for ``datetime.isoformat()`` of a timestamptz in UTC, as ``member_json`` writes it:
    six digits of microseconds unless they are 0, then none."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        f" || CASE WHEN date_trunc('second', {utc}) = {utc} THEN '' ELSE to_char({utc}, '.US') END"
        " || '+00:00'"
    )


def _page_sql(rows: str, total: str) -> str:
    """One statement for a page: its members as the JSON array ``member_json`` and orjson
    would write (row_to_json is compact, keys in this order), the total, whether more follow
    and the last shown member's ``createdAt`` and ``id`` for the cursor.

    ``rows`` selects ``$2 + 1`` of the church's members, newest first, after the offset or
    cursor given from ``$3`` on (the extra one says whether more follow); ``$1`` is the
    church, ``$2`` the page size.
    The text is a constant, so where asyncpg's statement cache is on it is prepared once.
    """
    return f"""
SELECT
    {total} AS total,
    count(*) > $2 AS has_more,
    '[' || coalesce(
        string_agg(row_to_json(shown)::text, ',' ORDER BY page.n) FILTER (WHERE page.n <= $2),
        ''
    ) || ']' AS data,
    min(shown."createdAt") FILTER (WHERE page.n = $2) AS last_created_at,
    min(shown.id::text) FILTER (WHERE page.n = $2) AS last_id
FROM (
    SELECT rows.*, row_number() OVER (ORDER BY rows.created_at DESC, rows.id DESC) AS n
    FROM ({rows}) AS rows
) AS page
CROSS JOIN LATERAL (
    SELECT
        page.id,
        page.church_id AS "churchId",
        page.first_name AS "firstName",
        page.last_name AS "lastName",
        page.phone,
        page.email,
        page.opt_in_sms AS "optInSms",
        {_utc_isoformat("page.created_at")} AS "createdAt",
        {_utc_isoformat("page.updated_at")} AS "updatedAt"
) AS shown
"""  # noqa: S608 - built at import from this module's own parts; values are parameters


_NUMBERED_PAGE_SQL = _page_sql(
    rows="""
        SELECT * FROM member
        WHERE church_id = $1
        ORDER BY created_at DESC, id DESC
        OFFSET $3 LIMIT $2 + 1""",
    total="(SELECT count(*) FROM member WHERE church_id = $1)",
)

# Keyset pagination on (created_at, id), newest first: stable under inserts.
_CURSOR_PAGE_SQL = _page_sql(
    rows="""
        SELECT * FROM member
        WHERE church_id = $1 AND (created_at, id) < ($3, $4)
        ORDER BY created_at DESC, id DESC
        LIMIT $2 + 1""",
    total="NULL::bigint",
)


async def _page_query(
    church_id: uuid.UUID, limit: int, page: int | None, cursor: str | None
) -> dict[str, Any]:
    """The page as ``list_members_json`` sends it, from one statement, no ORM models: the
    members' JSON is PostgreSQL's text, embedded as it is."""
    current_page: int | None = None
    if cursor:
        created, member_id = decode_cursor(cursor)
        if created.tzinfo is None:  # as Tortoise reads a naive time with use_tz: UTC
            created = created.replace(tzinfo=UTC)
        row = await fetch_row(_CURSOR_PAGE_SQL, church_id, limit, created, member_id)
    else:
        current_page = page or 1
        row = await fetch_row(_NUMBERED_PAGE_SQL, church_id, limit, (current_page - 1) * limit)
    return {
        "data": orjson.Fragment(row["data"]),
        "pagination": {
            "limit": limit,
            "page": current_page,
            "total": row["total"],
            "nextCursor": (
                encode_cursor(row["last_created_at"], row["last_id"]) if row["has_more"] else None
            ),
        },
    }


def _first_page(page: int | None, cursor: str | None) -> bool:
    return cursor is None and (page is None or page == 1)


def first_page_key(church_id: uuid.UUID, limit: int) -> str:
    """The cache key of a church's first page of ``limit`` members."""
    return cache_key(MEMBERS, church_id, "first", limit)


async def list_members_json(
    cache: CacheService | None,
    church_id: uuid.UUID,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    page: int | None = None,
    cursor: str | None = None,
) -> tuple[str | bytes, str]:
    """A page of members, newest first, as the encoded response body; the first page is
    served from the cache (a hit is returned as stored)."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))

    async def load() -> dict[str, Any]:
        return await _page_query(church_id, limit, page, cursor)

    if _first_page(page, cursor) and cache is not None:
        return await cache.get_or_load_json(
            MEMBERS, church_id, first_page_key(church_id, limit), load
        )
    return json_bytes(await load()), "bypass"


async def get_member(church_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    member = await Member.get_or_none(id=member_id, church_id=church_id)
    if member is None:
        raise NotFound("Member not found")
    return member


async def create_member(
    cache: CacheService | None,
    church_id: uuid.UUID,
    data: dict[str, Any],
    default_region: str,
    *,
    user_id: uuid.UUID | None,
) -> Member:
    data = dict(data)
    data["phone"] = normalise_phone(data["phone"], default_region)
    try:
        async with in_transaction():
            member = await Member.create(church_id=church_id, **data)
            await consent.record_initial(member, source=ConsentSource.STAFF, changed_by_id=user_id)
    except IntegrityError:
        raise Conflict("A member with this phone number already exists") from None
    if cache is not None:
        await cache.invalidate_church(church_id)
    return member


async def update_member(
    cache: CacheService | None,
    church_id: uuid.UUID,
    member_id: uuid.UUID,
    changes: dict[str, Any],
    default_region: str,
    *,
    user_id: uuid.UUID | None,
) -> Member:
    """Apply the changes; a change of the opt-in is kept in the consent history as the
    user's."""
    changes = dict(changes)
    opt_in = changes.pop("opt_in_sms", None)
    if "phone" in changes:
        changes["phone"] = normalise_phone(changes["phone"], default_region)
    try:
        async with in_transaction():
            member = await Member.select_for_update().get_or_none(id=member_id, church_id=church_id)
            if member is None:
                raise NotFound("Member not found")
            for name, value in changes.items():
                setattr(member, name, value)
            if changes:
                await member.save()
            if opt_in is not None and await consent.set_opt_in(
                member.id,
                church_id,
                opt_in,
                source=ConsentSource.STAFF,
                changed_by_id=user_id,
            ):
                await member.refresh_from_db()
    except IntegrityError:
        raise Conflict("A member with this phone number already exists") from None
    if cache is not None:
        await cache.invalidate_church(church_id)
    return member


async def delete_member(
    cache: CacheService | None, church_id: uuid.UUID, member_id: uuid.UUID
) -> None:
    deleted = await Member.filter(id=member_id, church_id=church_id).delete()
    if not deleted:
        raise NotFound("Member not found")
    if cache is not None:
        await cache.invalidate_church(church_id)
