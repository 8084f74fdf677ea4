"""The member list's page, built by one SQL statement: the same bytes the ORM-built page had,
pages and cursors at their boundaries, and only the church's own members."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

from tortoise import connections
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from koinonia.db import CONNECTION_NAME
from koinonia.models.core import Group, GroupMembership, Member
from koinonia.responses import json_bytes
from koinonia.services import members
from koinonia.web.state import get_state

# Names a JSON encoder must escape or pass through exactly: quotes, backslashes, control
# characters (short and \u forms), non-ASCII, an emoji, line and paragraph separators.
AWKWARD_NAMES = [
    ('O"Brien', "back\\slash"),
    ("tab\there", "new\nline\r\n"),
    ("bell\x07\x01\x1f\x7f", "form\x0cfeed\x08"),
    ("Zoë", "Ærøskøbing"),
    ("Ω 🙏 漢字", "\u2028\u2029"),
    ("'single'", "</script>"),
    ("", ""),
]

# Microseconds 0 (isoformat writes none), with trailing zeros (it writes all six) and small.
BASE = datetime(2026, 3, 1, 9, 30, 0, tzinfo=UTC)
TIMES = [
    BASE,
    BASE + timedelta(microseconds=120_000),
    BASE + timedelta(seconds=1, microseconds=5),
    BASE + timedelta(days=40, microseconds=999_999),
]


async def _set_times(member_id: uuid.UUID, created: datetime, updated: datetime) -> None:
    # Raw SQL: the ORM would stamp updated_at itself on save.
    await connections.get(CONNECTION_NAME).execute_query(
        "UPDATE member SET created_at = $2, updated_at = $3 WHERE id = $1",
        [member_id, created, updated],
    )


async def _seed(church_id: str, count: int, *, phone_offset: int = 0) -> list[Member]:
    """Varied members; several share a created_at so the id decides their order."""
    group = await Group.create(church_id=church_id, name=f"Choir {uuid.uuid4().hex[:6]}")
    created: list[Member] = []
    for n in range(count):
        first, last = AWKWARD_NAMES[n % len(AWKWARD_NAMES)]
        member = await Member.create(
            church_id=church_id,
            first_name=first or "x",
            last_name=last,
            phone=f"+1202555{phone_offset + n:04d}",
            email=None if n % 3 == 0 else f"m{n}+tag@example.org",
            opt_in_sms=n % 4 != 1,
        )
        if n % 2:
            await GroupMembership.create(group=group, member=member)
        when = TIMES[n % len(TIMES)]
        await _set_times(member.id, when, when + timedelta(minutes=n, microseconds=n * 10))
        created.append(member)
    return created


async def _orm_page(
    church_id: uuid.UUID, limit: int, page: int | None, cursor: str | None
) -> bytes:
    """The page as the ORM built it before: models, member_json, orjson."""
    query = Member.filter(church_id=church_id)
    total = current_page = None
    if cursor:
        created, member_id = members.decode_cursor(cursor)
        query = query.filter(Q(created_at__lt=created) | Q(created_at=created, id__lt=member_id))
        rows = await query.order_by("-created_at", "-id").limit(limit + 1)
    else:
        current_page = page or 1
        total = await query.count()
        rows = (
            await query.order_by("-created_at", "-id")
            .offset((current_page - 1) * limit)
            .limit(limit + 1)
        )
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if has_more and rows:
        next_cursor = members.encode_cursor(rows[-1].created_at.isoformat(), str(rows[-1].id))
    return json_bytes(
        {
            "data": [members.member_json(m) for m in rows],
            "pagination": {
                "limit": limit,
                "page": current_page,
                "total": total,
                "nextCursor": next_cursor,
            },
        }
    )


async def _page(church_id: str, **query) -> bytes:
    body, status = await members.list_members_json(None, uuid.UUID(church_id), **query)
    assert status == "bypass"
    return body


async def test_every_page_is_byte_for_byte_the_orm_built_page(church_a):
    await _seed(church_a.church_id, 17)
    church = uuid.UUID(church_a.church_id)
    for limit in (1, 3, 7, 17, 50):
        for page in range(1, 17 // limit + 3):
            expected = await _orm_page(church, limit, page, None)
            assert await _page(church_a.church_id, limit=limit, page=page) == expected, (
                limit,
                page,
            )


async def test_a_cursor_walk_is_byte_for_byte_the_orm_built_walk(church_a):
    await _seed(church_a.church_id, 15)
    church = uuid.UUID(church_a.church_id)
    for limit in (1, 4, 15):
        cursor, seen = None, []
        for _ in range(20):
            body = await _page(church_a.church_id, limit=limit, cursor=cursor)
            assert body == await _orm_page(church, limit, None, cursor)
            decoded = json.loads(body)
            seen += [m["id"] for m in decoded["data"]]
            cursor = decoded["pagination"]["nextCursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 15


async def test_page_boundaries(church_a):
    await _seed(church_a.church_id, 6)
    newest_first = [
        str(m.id)
        for m in await Member.filter(church_id=church_a.church_id).order_by("-created_at", "-id")
    ]
    exact = json.loads(await _page(church_a.church_id, limit=6))
    assert [m["id"] for m in exact["data"]] == newest_first
    assert exact["pagination"] == {"limit": 6, "page": 1, "total": 6, "nextCursor": None}

    one_short = json.loads(await _page(church_a.church_id, limit=5))
    assert [m["id"] for m in one_short["data"]] == newest_first[:5]
    assert one_short["pagination"]["nextCursor"] is not None

    last = json.loads(await _page(church_a.church_id, limit=5, page=2))
    assert [m["id"] for m in last["data"]] == newest_first[5:]
    assert last["pagination"] == {"limit": 5, "page": 2, "total": 6, "nextCursor": None}

    beyond = json.loads(await _page(church_a.church_id, limit=5, page=3))
    assert beyond == {
        "data": [],
        "pagination": {"limit": 5, "page": 3, "total": 6, "nextCursor": None},
    }


async def test_an_empty_church_has_an_empty_first_page(church_a):
    assert json.loads(await _page(church_a.church_id)) == {
        "data": [],
        "pagination": {"limit": 50, "page": 1, "total": 0, "nextCursor": None},
    }


async def test_another_churchs_members_never_appear(church_a, church_b):
    # Same timestamps in both churches, so church b's rows sit between church a's.
    own = {str(m.id) for m in await _seed(church_a.church_id, 9)}
    await _seed(church_b.church_id, 9)
    for query in ({"limit": 4, "page": 1}, {"limit": 4, "page": 3}, {"limit": 50}):
        body = json.loads(await _page(church_a.church_id, **query))
        assert {m["churchId"] for m in body["data"]} <= {church_a.church_id}
        assert body["pagination"]["total"] == 9
    cursor, seen = None, set()
    for _ in range(10):
        body = json.loads(await _page(church_a.church_id, limit=2, cursor=cursor))
        seen |= {m["id"] for m in body["data"]}
        cursor = body["pagination"]["nextCursor"]
        if cursor is None:
            break
    assert seen == own


async def test_a_cursor_from_another_church_lists_only_the_callers_members(church_a, church_b):
    await _seed(church_a.church_id, 5)
    theirs = {str(m.id) for m in await _seed(church_b.church_id, 5)}
    cursor = json.loads(await _page(church_a.church_id, limit=1))["pagination"]["nextCursor"]
    body = json.loads(await _page(church_b.church_id, limit=50, cursor=cursor))
    assert body["data"] and {m["id"] for m in body["data"]} <= theirs


async def test_a_cursor_without_a_time_zone_reads_as_utc(church_a):
    await _seed(church_a.church_id, 8)
    aware = json.loads(await _page(church_a.church_id, limit=3))["pagination"]["nextCursor"]
    created, member_id = members.decode_cursor(aware)
    raw = f"{created.replace(tzinfo=None).isoformat()}|{member_id}".encode()
    naive = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert await _page(church_a.church_id, limit=3, cursor=naive) == await _page(
        church_a.church_id, limit=3, cursor=aware
    )


async def test_the_page_inside_a_transaction_sees_its_uncommitted_member(church_a):
    class RolledBack(Exception):
        pass

    try:
        async with in_transaction():
            member = await Member.create(
                church_id=church_a.church_id, first_name="Pending", phone="+12025559999"
            )
            body = json.loads(await _page(church_a.church_id))
            assert [m["id"] for m in body["data"]] == [str(member.id)]
            raise RolledBack
    except RolledBack:
        pass
    assert json.loads(await _page(church_a.church_id))["data"] == []


async def test_the_cached_first_page_is_the_loaded_page(app, client, church_a):
    await _seed(church_a.church_id, 4)
    church = uuid.UUID(church_a.church_id)
    expected = await _orm_page(church, 50, None, None)
    miss = await client.get("/api/members", headers=church_a.headers)
    hit = await client.get("/api/members", headers=church_a.headers)
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("MISS", "HIT")
    assert await miss.get_data() == await hit.get_data() == expected
    body, status = await members.list_members_json(get_state(app).cache, church)
    assert (status, body) == ("hit", expected)


def _plan_nodes(plan: dict) -> list[dict]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


async def test_a_page_reads_the_churchs_newest_members_in_index_order_without_sorting(church_a):
    await _seed(church_a.church_id, 6)
    church = uuid.UUID(church_a.church_id)
    queries = [
        (members._NUMBERED_PAGE_SQL, [church, 5, 0]),
        (members._CURSOR_PAGE_SQL, [church, 5, BASE + timedelta(days=41), uuid.uuid4()]),
    ]
    async with in_transaction(CONNECTION_NAME) as conn:
        # A test church is a few rows, which a sequential scan (or another index and a
        # sort) reads fastest, whatever the statistics of the moment say; a church of
        # thousands is not. Both are made costly: only with the listing index can the plan
        # read the newest members in order without a Sort node.
        await conn.execute_query("SET LOCAL enable_seqscan = off")
        await conn.execute_query("SET LOCAL enable_sort = off")
        for sql, values in queries:
            _count, rows = await conn.execute_query("EXPLAIN (FORMAT JSON) " + sql, values)
            plan = rows[0]["QUERY PLAN"]
            nodes = _plan_nodes((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
            indexes = {n.get("Index Name") for n in nodes}
            assert "member_church_listing_idx" in indexes, nodes
            assert not [n for n in nodes if n["Node Type"] == "Sort"], nodes
