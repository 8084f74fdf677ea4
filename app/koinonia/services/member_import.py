"""Member import: a CSV file or a JSON list of up to ``MAX_ROWS`` members, all or nothing.

Rows are read one at a time (a CSV from a spooled file, never split into one big list),
validated, and written ``BATCH_SIZE`` at a time by one statement each, all inside ONE
transaction: a file with any bad row, or that breaks off, changes nothing, and its answer
lists every bad row (row number, field, message; the first ``MAX_REPORTED_ERRORS``).

A member is identified by phone within the church: a row whose phone is already a member's
updates that member (``INSERT ... ON CONFLICT (church_id, phone)``), so importing the same
file twice creates nobody the second time. A value not given (a blank CSV cell, an absent
or null JSON field) keeps the member's: an import fills in and corrects, it does not clear.
An import never opts a member back in: the member's own STOP is honoured until the member
texts START or a user edits the member.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from pydantic import EmailStr, Field, ValidationError
from tortoise.transactions import in_transaction

from koinonia.db import CONNECTION_NAME
from koinonia.errors import ApiError, BadRequest
from koinonia.schemas import ApiModel
from koinonia.services import members
from koinonia.stores.cache import CacheService

log = logging.getLogger(__name__)

MAX_ROWS = 50_000
BATCH_SIZE = 1_000
MAX_REPORTED_ERRORS = 200


class ImportRow(ApiModel):
    """One member of an import (a CSV row or a JSON object)."""

    first_name: str = Field(min_length=1, max_length=100)
    last_name: str | None = Field(default=None, max_length=100, description="blank: unchanged")
    phone: str = Field(
        min_length=3, max_length=32, description="E.164, or national (default region)"
    )
    email: EmailStr | None = Field(default=None, description="blank: unchanged")
    opt_in_sms: bool | None = Field(
        default=None,
        description="true/false (also yes/no, 1/0); blank: opted in when new, unchanged "
        "otherwise. false opts an existing member out; true never opts one back in.",
    )


# CSV header -> field: case, spaces, "_" and "-" do not matter ("First Name", "first_name").
_COLUMNS = {"firstname": "firstName", "lastname": "lastName", "phone": "phone", "email": "email"}
_COLUMNS.update({"optinsms": "optInSms", "optin": "optInSms"})
REQUIRED_COLUMNS = ("firstName", "phone")


class ImportRejected(ApiError):
    status, code = 422, "import_rejected"


class ImportTooLarge(ApiError):
    status, code = 413, "import_too_large"


@dataclass
class ImportResult:
    import_id: uuid.UUID
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    opted_out: int = 0
    ignored_columns: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "importId": str(self.import_id),
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "optedOut": self.opted_out,
            "ignoredColumns": self.ignored_columns,
        }


# One batch in one statement: the church's members with these phones as they are
# (``existing``, locked), each row merged with its member (a value not given keeps the
# member's), the upsert, and a consent event for each new member and each member this import
# opted out. An update that would change nothing is skipped (counted unchanged).
_UPSERT_BATCH = """
WITH input AS (
    SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::boolean[])
         AS r(id, first_name, last_name, phone, email, opt_in)
), existing AS (
    SELECT m.id, m.phone, m.last_name, m.email, m.opt_in_sms
    FROM member m JOIN input i ON i.phone = m.phone
    WHERE m.church_id = $1
    FOR UPDATE OF m
), merged AS (
    SELECT i.id, i.first_name, coalesce(i.last_name, e.last_name, '') AS last_name, i.phone,
           coalesce(i.email, e.email) AS email, coalesce(i.opt_in, true) AS opt_in
    FROM input i LEFT JOIN existing e ON e.phone = i.phone
), upserted AS (
    INSERT INTO member AS m (id, church_id, first_name, last_name, phone, email, opt_in_sms,
                             created_at, updated_at)
    SELECT id, $1, first_name, last_name, phone, email, opt_in, $8, $8 FROM merged
    ON CONFLICT (church_id, phone) DO UPDATE SET
        first_name = EXCLUDED.first_name,
        last_name = EXCLUDED.last_name,
        email = EXCLUDED.email,
        opt_in_sms = m.opt_in_sms AND EXCLUDED.opt_in_sms,
        updated_at = EXCLUDED.updated_at
    WHERE (m.first_name, m.last_name, m.email, m.opt_in_sms) IS DISTINCT FROM
          (EXCLUDED.first_name, EXCLUDED.last_name, EXCLUDED.email,
           m.opt_in_sms AND EXCLUDED.opt_in_sms)
    RETURNING m.id, m.opt_in_sms
), consent AS (
    INSERT INTO consent_event (id, church_id, member_id, opted_in, source, changed_by_id,
                               reference, created_at)
    SELECT gen_random_uuid(), $1, u.id, u.opt_in_sms, 'import', $9, $10, $8
    FROM upserted u LEFT JOIN existing e ON e.id = u.id
    WHERE e.id IS NULL OR e.opt_in_sms <> u.opt_in_sms
    RETURNING 1
)
SELECT count(*) FILTER (WHERE e.id IS NULL) AS created,
       count(*) FILTER (WHERE e.id IS NOT NULL) AS updated,
       count(*) FILTER (WHERE e.id IS NOT NULL AND e.opt_in_sms AND NOT u.opt_in_sms)
           AS opted_out,
       (SELECT count(*) FROM consent) AS consent_events
FROM upserted u LEFT JOIN existing e ON e.id = u.id
"""


@dataclass(frozen=True)
class _Row:
    first_name: str
    last_name: str | None
    phone: str
    email: str | None
    opt_in: bool | None


class _Import:
    """Validation state of one file, and its writes inside the file's transaction."""

    def __init__(
        self,
        church_id: uuid.UUID,
        default_region: str,
        user_id: uuid.UUID | None,
    ) -> None:
        self.church_id = church_id
        self.default_region = default_region
        self.user_id = user_id
        self.result = ImportResult(import_id=uuid.uuid4())
        self.errors: list[dict[str, Any]] = []
        self.error_count = 0
        self.phones: dict[str, int] = {}  # phone -> the row it was first seen on
        self.batch: list[_Row] = []

    def error(self, row: int, field_name: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"row": row, "field": field_name, "message": message})

    def add(self, row: int, raw: Any) -> None:
        self.result.rows += 1
        if self.result.rows > MAX_ROWS:
            raise ImportTooLarge(
                f"The import has more than {MAX_ROWS:,} rows: nothing was imported. "
                "Split it into files of at most that many rows."
            )
        if not isinstance(raw, dict):
            self.error(row, "", "a member must be an object")
            return
        try:
            parsed = ImportRow.model_validate(raw)
        except ValidationError as exc:
            for item in exc.errors(include_url=False, include_input=False):
                self.error(row, ".".join(str(p) for p in item["loc"]), item["msg"])
            return
        try:
            phone = members.normalise_phone(parsed.phone, self.default_region)
        except ApiError as exc:
            self.error(row, "phone", exc.details[0]["message"] if exc.details else exc.message)
            return
        first = self.phones.setdefault(phone, row)
        if first != row:
            self.error(row, "phone", f"{phone} is already on row {first}")
            return
        self.batch.append(
            _Row(
                first_name=parsed.first_name,
                last_name=parsed.last_name,
                phone=phone,
                email=str(parsed.email) if parsed.email else None,
                opt_in=parsed.opt_in_sms,
            )
        )

    async def write_batch(self, connection: Any) -> None:
        """Write the rows validated so far, unless the file is already rejected."""
        batch, self.batch = self.batch, []
        if not batch or self.error_count:
            return
        rows = await connection.execute_query_dict(
            _UPSERT_BATCH,
            [
                self.church_id,
                [uuid.uuid4() for _ in batch],
                [r.first_name for r in batch],
                [r.last_name for r in batch],
                [r.phone for r in batch],
                [r.email for r in batch],
                [r.opt_in for r in batch],
                datetime.now(UTC),
                self.user_id,
                str(self.result.import_id),
            ],
        )
        counts = rows[0]
        self.result.created += counts["created"]
        self.result.updated += counts["updated"]
        self.result.opted_out += counts["opted_out"]
        self.result.unchanged += len(batch) - counts["created"] - counts["updated"]


async def import_members(
    cache: CacheService | None,
    church_id: uuid.UUID,
    rows: Iterable[tuple[int, Any]],
    *,
    ignored_columns: list[str],
    default_region: str,
    user_id: uuid.UUID | None,
) -> ImportResult:
    """Import (row number, row) pairs in one transaction; ImportRejected lists the bad rows
    and leaves the church's members as they were."""
    state = _Import(church_id, default_region, user_id)
    state.result.ignored_columns = ignored_columns
    async with in_transaction(CONNECTION_NAME) as connection:
        for number, raw in rows:
            state.add(number, raw)
            if len(state.batch) >= BATCH_SIZE:
                await state.write_batch(connection)
        await state.write_batch(connection)
        if state.error_count:
            # Raised inside the transaction: everything written so far is rolled back.
            raise ImportRejected(
                f"{state.error_count} of {state.result.rows} rows have errors: nothing was "
                "imported. Correct them and import the whole file again.",
                details={"errorCount": state.error_count, "errors": state.errors},
            )
        if not state.result.rows:
            raise ImportRejected("The import has no rows: nothing was imported.")
    if cache is not None:
        await cache.invalidate_church(church_id)
    log.info(
        "members imported",
        extra={"churchId": str(church_id), "importId": str(state.result.import_id)},
    )
    return state.result


# --- sources -----------------------------------------------------------------------------


def _column_name(header: str) -> str:
    return re.sub(r"[\s_\-]+", "", header).lower()


@dataclass
class CsvSource:
    """A CSV file's rows as (spreadsheet row number, {field: value}); header is row 1."""

    rows: Iterator[tuple[int, dict[str, str]]]
    ignored_columns: list[str]


def open_csv(binary: IO[bytes]) -> CsvSource:
    """Read the header of a UTF-8 CSV (a BOM, as Excel writes, is fine) and check its
    columns; the rows are read as they are consumed."""
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _unreadable(1, exc) from None
    if not header or not any(cell.strip() for cell in header):
        raise ImportRejected(
            "The file has no header row: its first line must name the columns "
            "(firstName, lastName, phone, email, optInSms)."
        )
    mapped = [_COLUMNS.get(_column_name(cell)) for cell in header]
    ignored = [cell for cell, name in zip(header, mapped, strict=True) if name is None]
    columns = {name for name in mapped if name}
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ImportRejected(
            f"The header row has no {' and no '.join(missing)} column: nothing was imported.",
            details={
                "errorCount": len(missing),
                "errors": [
                    {"row": 1, "field": name, "message": "column missing"} for name in missing
                ],
            },
        )
    return CsvSource(_csv_rows(reader, mapped), ignored)


def _csv_rows(
    reader: Iterator[list[str]], mapped: list[str | None]
) -> Iterator[tuple[int, dict[str, str]]]:
    number = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (UnicodeDecodeError, csv.Error) as exc:
            raise _unreadable(number + 1, exc) from None
        number += 1
        if not any(cell.strip() for cell in cells):
            continue  # blank lines, as spreadsheets leave at the end
        # A blank cell is a value not given; cells past the header's columns are ignored.
        yield (
            number,
            {
                name: cell
                for name, cell in zip(mapped, cells, strict=False)
                if name is not None and cell.strip()
            },
        )


def _unreadable(row: int, exc: Exception) -> BadRequest:
    if isinstance(exc, UnicodeDecodeError):
        return BadRequest(
            f"Row {row} is not UTF-8 text: nothing was imported. Save the file as "
            "'CSV UTF-8' and upload it again."
        )
    return BadRequest(f"Row {row} is not valid CSV ({exc}): nothing was imported.")


def json_rows(body: bytes) -> Iterator[tuple[int, Any]]:
    """The rows of a JSON import ``{"members": [...]}``, numbered from 1."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("The body is not valid JSON: nothing was imported.") from None
    rows = document.get("members") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise ImportRejected(
            'The body must be an object with a "members" list: nothing was imported.',
            details={
                "errorCount": 1,
                "errors": [{"row": 0, "field": "members", "message": "a list is required"}],
            },
        )
    return enumerate(rows, start=1)
