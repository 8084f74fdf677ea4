"""Delivery state in PostgreSQL: who may call the provider, and what each call came to.

    queued ──claim──▶ sending ──result──▶ sent | failed | unknown
       ▲                 │                           │
       └─ not accepted ──┘      (evidence) ──────────┴──▶ sent | failed | queued

- A job claims its chunk's ``queued`` rows (due by ``next_attempt_at``) a window at a time,
  each window in ONE statement that sets ``sending``, the job's claim token and the attempt;
  it claims only as many as it is about to send (jobs.SendWindow), and calls the provider
  only for the rows that statement returned. Every kind of repeat (SAQ retry, sweep, a replayed
  Idempotency-Key, a second worker running the same job) claims nothing that is not
  ``queued``, so it cannot call the provider again.
- The results of a window are written in ONE statement guarded by the claim token and
  ``sending``: a status callback that arrived first (``failed`` or ``delivered``) is not
  overwritten, and a second runner cannot write over the first one.
- A member deleted or opted out after the message was recorded is ``failed`` by the claim
  itself, never texted.
- A row whose holder stopped (killed worker, job timeout, database gone after the call) stays
  ``sending``; once its claim is older than any job could run it becomes ``unknown``.
- ``unknown`` is settled by evidence only: the provider's status callback or its lookup
  (``find_sent``). What no evidence settles within the bound is listed for an operator, who
  may resend it explicitly.

Every statement is plain SQL with parameters (no prepared statements, no session state:
the app reaches PostgreSQL through PgBouncer in transaction mode).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise import connections

from koinonia.db import CONNECTION_NAME
from koinonia.models.messaging import DeliveryStatus

OPTED_OUT_ERROR = "member opted out or was deleted before the send"
STALE_CLAIM_ERROR = "the job holding the claim stopped before recording the provider's answer"


@dataclass(frozen=True)
class ClaimedDelivery:
    id: uuid.UUID
    message_id: uuid.UUID
    church_id: uuid.UUID
    member_id: uuid.UUID | None
    phone: str
    content: str
    attempt: int
    status: DeliveryStatus  # sending (ours to send) or failed (opted out / deleted member)
    from_number: str | None = None  # the church's linked number, if it has one


@dataclass(frozen=True)
class Outcome:
    """What one provider call came to, as the result statement writes it."""

    delivery_id: uuid.UUID
    status: DeliveryStatus
    provider_message_id: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Changed:
    """A delivery whose status a statement changed (for events and message completion)."""

    id: uuid.UUID
    message_id: uuid.UUID
    church_id: uuid.UUID
    member_id: uuid.UUID | None
    status: DeliveryStatus


async def _rows(sql: str, params: list[Any]) -> list[dict[str, Any]]:
    # execute_query_dict, not execute_query: Tortoise's execute_query drops the rows of any
    # statement starting with UPDATE/INSERT/DELETE, RETURNING included.
    return await connections.get(CONNECTION_NAME).execute_query_dict(sql, params)


def _changed(rows: Iterable[Any]) -> list[Changed]:
    return [
        Changed(
            id=r["id"],
            message_id=r["message_id"],
            church_id=r["church_id"],
            member_id=r["member_id"],
            status=DeliveryStatus(r["status"]),
        )
        for r in rows
    ]


# FOR UPDATE makes a concurrent claimer of the same rows wait, then re-check ``queued`` on
# the row the first one committed (READ COMMITTED), so it claims nothing. Parameters: $1 the
# claim token, $2 the delivery ids, $3 now, $4 the opted-out error.
_CLAIM_CANDIDATES = """
candidate AS (
    SELECT d.id, (mem.id IS NOT NULL AND mem.opt_in_sms) AS may_text
    FROM delivery d
    LEFT JOIN member mem ON mem.id = d.member_id
    WHERE d.id = ANY($2::uuid[]) AND d.status = 'queued'
      AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $3)
    FOR UPDATE OF d
)"""
_CLAIM_CANDIDATES_UPDATE = """
UPDATE delivery d
SET status = CASE WHEN c.may_text THEN 'sending' ELSE 'failed' END,
    claim_token = CASE WHEN c.may_text THEN $1::uuid END,
    claimed_at = $3,
    attempts = d.attempts + CASE WHEN c.may_text THEN 1 ELSE 0 END,
    last_error = CASE WHEN c.may_text THEN d.last_error ELSE $4 END,
    updated_at = $3
FROM candidate c, message m
WHERE d.id = c.id AND m.id = d.message_id AND d.status = 'queued'
RETURNING d.id, d.message_id, d.church_id, d.member_id, d.phone, d.attempts, d.status,
          m.content,
          -- The church's own number once linked (its oldest); none: the platform's number.
          (SELECT p.number FROM church_phone_number p
           WHERE p.church_id = d.church_id AND p.status = 'linked'
           ORDER BY p.created_at, p.id LIMIT 1) AS from_number"""
_CLAIM = f"WITH {_CLAIM_CANDIDATES}{_CLAIM_CANDIDATES_UPDATE}"


async def claim(
    delivery_ids: list[uuid.UUID], token: uuid.UUID, now: datetime
) -> list[ClaimedDelivery]:
    """Claim the due ``queued`` rows among ``delivery_ids`` for one job attempt."""
    if not delivery_ids:
        return []
    rows = await _rows(_CLAIM, [token, delivery_ids, now, OPTED_OUT_ERROR])
    return [_claimed(r) for r in rows]


def _claimed(r: dict[str, Any]) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=r["id"],
        message_id=r["message_id"],
        church_id=r["church_id"],
        member_id=r["member_id"],
        phone=r["phone"],
        content=r["content"],
        attempt=r["attempts"],
        status=DeliveryStatus(r["status"]),
        from_number=r["from_number"],
    )


def _record_outcomes_update(now: int, first_array: int) -> str:
    """The UPDATE that writes a window's results where claim token $1 still holds the row:
    ``$now`` is the time, the five arrays (ids, statuses, provider ids, errors, next attempts)
    start at ``$first_array``."""
    ids, statuses, provider_ids, errors, next_attempts = (f"${first_array + i}" for i in range(5))
    return f"""
UPDATE delivery d
SET status = r.status,
    provider_message_id = coalesce(r.provider_message_id, d.provider_message_id),
    last_error = r.error,
    sent_at = CASE WHEN r.status = 'sent' THEN ${now} ELSE d.sent_at END,
    next_attempt_at = r.next_attempt_at,
    claim_token = NULL,
    updated_at = ${now}
FROM unnest({ids}::uuid[], {statuses}::text[], {provider_ids}::text[], {errors}::text[],
            {next_attempts}::timestamptz[])
     AS r(id, status, provider_message_id, error, next_attempt_at)
WHERE d.id = r.id AND d.status = 'sending' AND d.claim_token = $1
RETURNING d.id, d.message_id, d.church_id, d.member_id, d.status"""  # noqa: S608 - numbers only


_RECORD_OUTCOMES = _record_outcomes_update(now=2, first_array=3)


def _outcome_arrays(outcomes: list[Outcome]) -> list[list[Any]]:
    """The five arrays ``_record_outcomes_update`` unnests, in its order."""
    return [
        [o.delivery_id for o in outcomes],
        [str(o.status) for o in outcomes],
        [o.provider_message_id for o in outcomes],
        [o.error[:2000] if o.error else None for o in outcomes],
        [o.next_attempt_at for o in outcomes],
    ]


async def record_outcomes(
    token: uuid.UUID, outcomes: list[Outcome], now: datetime
) -> list[Changed]:
    """Write a chunk's results, only where this claim still holds the row."""
    if not outcomes:
        return []
    rows = await _rows(
        _RECORD_OUTCOMES,
        [
            token,
            now,
            *_outcome_arrays(outcomes),
        ],
    )
    return _changed(rows)


# The answers of a window and the claim of the next, in ONE statement (halving a window's
# statements): _RECORD_OUTCOMES and _CLAIM as two data-modifying CTEs. They touch disjoint
# rows (``sending`` under this token; ``queued``), and the statement is atomic: both
# happen or neither. Both are built from the same parts.
_RECORD_THEN_CLAIM = f"""
WITH recorded AS ({_record_outcomes_update(now=3, first_array=5)}
), {_CLAIM_CANDIDATES}, claimed AS ({_CLAIM_CANDIDATES_UPDATE}
)
SELECT false AS claimed, id, message_id, church_id, member_id, status::text AS status,
       NULL::text AS phone, NULL::int AS attempts, NULL::text AS content,
       NULL::text AS from_number
FROM recorded
UNION ALL
SELECT true, id, message_id, church_id, member_id, status::text, phone, attempts, content,
       from_number
FROM claimed
"""  # noqa: S608 - built from this module's own parts


async def record_then_claim(
    token: uuid.UUID,
    outcomes: list[Outcome],
    delivery_ids: list[uuid.UUID],
    now: datetime,
) -> tuple[list[Changed], list[ClaimedDelivery]]:
    """``record_outcomes`` then ``claim``, as one statement."""
    rows = await _rows(
        _RECORD_THEN_CLAIM,
        [
            token,
            delivery_ids,
            now,
            OPTED_OUT_ERROR,
            *_outcome_arrays(outcomes),
        ],
    )
    recorded = _changed(r for r in rows if not r["claimed"])
    return recorded, [_claimed(r) for r in rows if r["claimed"]]


# A message is finished when none of its deliveries waits or is being sent; it failed when
# every delivery failed. ``unknown`` ones count as finished: they are reported, not waited on.
_FINISH_MESSAGES = """
UPDATE message m
SET status = CASE WHEN EXISTS (
        SELECT 1 FROM delivery d WHERE d.message_id = m.id AND d.status <> 'failed'
    ) THEN 'sent' ELSE 'failed' END
WHERE m.id = ANY($1::uuid[]) AND m.status = 'queued'
  AND NOT EXISTS (
      SELECT 1 FROM delivery d
      WHERE d.message_id = m.id AND d.status IN ('queued', 'sending')
  )
"""


async def finish_messages(message_ids: Iterable[uuid.UUID]) -> None:
    ids = list(set(message_ids))
    if ids:
        await _rows(_FINISH_MESSAGES, [ids])


_MARK_STALE_CLAIMS = """
UPDATE delivery
SET status = 'unknown', claim_token = NULL, last_error = $2, updated_at = $3
WHERE status = 'sending' AND claimed_at < $1
RETURNING id, message_id, church_id, member_id, status
"""


async def mark_stale_claims_unknown(claimed_before: datetime, now: datetime) -> list[Changed]:
    """Claims older than any job can run: their holder stopped; the call may have happened."""
    rows = await _rows(_MARK_STALE_CLAIMS, [claimed_before, STALE_CLAIM_ERROR, now])
    return _changed(rows)


@dataclass(frozen=True)
class InDoubt:
    id: uuid.UUID
    message_id: uuid.UUID
    church_id: uuid.UUID
    phone: str
    content: str
    claimed_at: datetime
    last_error: str | None


_IN_DOUBT = """
SELECT d.id, d.message_id, d.church_id, d.phone, m.content, d.claimed_at, d.last_error
FROM delivery d JOIN message m ON m.id = d.message_id
WHERE d.status = 'unknown' AND d.claimed_at >= $1 AND d.claimed_at < $2
ORDER BY d.claimed_at
LIMIT $3
"""


async def unknown_deliveries(
    claimed_from: datetime, claimed_before: datetime, limit: int
) -> list[InDoubt]:
    """``unknown`` deliveries claimed in [claimed_from, claimed_before), oldest first."""
    rows = await _rows(_IN_DOUBT, [claimed_from, claimed_before, limit])
    return [
        InDoubt(
            id=r["id"],
            message_id=r["message_id"],
            church_id=r["church_id"],
            phone=r["phone"],
            content=r["content"],
            claimed_at=r["claimed_at"],
            last_error=r["last_error"],
        )
        for r in rows
    ]


_SETTLE_UNKNOWN_SENT = """
UPDATE delivery
SET status = 'sent', provider_message_id = $2, sent_at = coalesce(sent_at, $3),
    last_error = NULL, updated_at = $3
WHERE id = $1 AND status = 'unknown'
RETURNING id, message_id, church_id, member_id, status
"""


async def settle_unknown_as_sent(
    delivery_id: uuid.UUID, provider_message_id: str, now: datetime
) -> list[Changed]:
    rows = await _rows(_SETTLE_UNKNOWN_SENT, [delivery_id, provider_message_id, now])
    return _changed(rows)


# Back to queued: a provider that proves absence said it never accepted it, or an operator
# confirmed a resend. The message waits again too.
_REQUEUE_UNKNOWN = """
WITH requeued AS (
    UPDATE delivery
    SET status = 'queued', claim_token = NULL, next_attempt_at = $2, last_error = $3,
        updated_at = $2
    WHERE id = ANY($1::uuid[]) AND status = 'unknown'
    RETURNING id, message_id, church_id, member_id, status
), message_waits AS (
    UPDATE message SET status = 'queued'
    WHERE id IN (SELECT message_id FROM requeued) AND status <> 'queued'
)
SELECT * FROM requeued
"""


async def requeue_unknown(
    delivery_ids: list[uuid.UUID], now: datetime, reason: str
) -> list[Changed]:
    if not delivery_ids:
        return []
    rows = await _rows(_REQUEUE_UNKNOWN, [delivery_ids, now, reason])
    return _changed(rows)


_STALLED = """
SELECT id FROM delivery
WHERE status = 'queued' AND next_attempt_at < $1
ORDER BY next_attempt_at
LIMIT $2
"""


async def stalled_queued(due_before: datetime, limit: int = 5000) -> list[uuid.UUID]:
    """Queued deliveries due long ago: their job was lost (Redis failed at the enqueue)."""
    rows = await _rows(_STALLED, [due_before, limit])
    return [r["id"] for r in rows]


_UNRESOLVED_COUNT = """
SELECT count(*) AS n FROM delivery WHERE status = 'unknown' AND claimed_at < $1
"""


async def count_unresolved(claimed_before: datetime) -> int:
    rows = await _rows(_UNRESOLVED_COUNT, [claimed_before])
    return int(rows[0]["n"])
