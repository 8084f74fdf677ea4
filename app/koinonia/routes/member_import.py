"""Member import: a CSV file (body or upload) or a JSON list, all or nothing."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterable
from typing import IO, Any

from pydantic import Field
from quart import Blueprint, request
from quart_schema import document_request, document_response, tag
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from koinonia.errors import BadRequest
from koinonia.openapi import document_errors, document_request_media
from koinonia.schemas import ApiModel
from koinonia.services import member_import
from koinonia.services.permissions import Permission
from koinonia.web.state import get_state
from koinonia.web.tenancy import current_church_id, current_user, require_permission

bp = Blueprint("member_import", __name__, url_prefix="/api/members")

IMPORT_PATH = "/api/members/import"  # its body limit is member_import_max_bytes (app.py)
CSV_TYPES = ("text/csv", "application/csv")
# A CSV body beyond this many bytes is spooled to a temporary file rather than kept in memory.
SPOOL_IN_MEMORY_BYTES = 1_048_576

CSV_COLUMNS = """\
Columns, named in a header row (case, spaces, `_` and `-` do not matter: `First Name`,
`first_name` and `firstName` are one column); other columns are ignored and listed in
`ignoredColumns`.

| column | required | value |
| --- | --- | --- |
| `firstName` | yes | 1-100 characters |
| `lastName` | no | up to 100 characters |
| `phone` | yes | E.164 (`+14155550123`) or national (default region); identifies the member |
| `email` | no | an email address |
| `optInSms` | no | `true`/`false` (`yes`/`no`, `1`/`0`); blank: opted in if new, else unchanged |

UTF-8 (a BOM is fine), comma-separated; a field with commas, quotes or line breaks in double
quotes. A blank cell keeps the member's value. Row numbers in errors are the spreadsheet's:
the header is row 1."""


class MemberImportJson(ApiModel):
    members: list[member_import.ImportRow] = Field(max_length=member_import.MAX_ROWS)


class MemberImportOut(ApiModel):
    import_id: uuid.UUID = Field(description="the consent history's reference to this import")
    rows: int
    created: int
    updated: int
    unchanged: int
    opted_out: int = Field(description="existing members this import opted out")
    ignored_columns: list[str] = Field(description="CSV columns that are not member fields")


class ImportRowError(ApiModel):
    row: int = Field(description="the spreadsheet's row number (the header is row 1)")
    field: str
    message: str


class ImportRejectedDetails(ApiModel):
    errors: list[ImportRowError] = Field(description="the first 200")
    error_count: int


class ImportRejectedError(ApiModel):
    code: str = Field(description="`import_rejected`")
    message: str
    details: ImportRejectedDetails | None = Field(description="null: no header row, no rows")


class ImportRejectedResponse(ApiModel):
    """Invalid rows, no rows, or a JSON body of the wrong shape: nothing was imported."""

    error: ImportRejectedError


async def _spooled_body(limit: int) -> IO[bytes]:
    """The request body in a file (memory first, then disk), refused past ``limit`` bytes
    (a body sent without Content-Length is measured as it arrives)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 (returned open)
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > limit:
            spool.close()
            raise RequestEntityTooLarge()
        spool.write(chunk)
    spool.seek(0)
    return spool  # type: ignore[return-value]


@bp.post("/import")
@tag(["members"])
@require_permission(Permission.MANAGE_MEMBERS)
@document_request(MemberImportJson)
@document_request_media(
    {
        "text/csv": {"schema": {"type": "string", "description": CSV_COLUMNS}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": CSV_COLUMNS}
                },
            }
        },
    }
)
@document_response(MemberImportOut, 200)
@document_response(ImportRejectedResponse, 422)
@document_errors(415)
async def import_members() -> dict[str, Any]:
    """Import up to 50,000 members from a CSV file or a JSON list, all or nothing.

    Send the CSV as the body (`Content-Type: text/csv`) or as the `file` field of a
    `multipart/form-data` upload, or send JSON `{"members": [...]}` with the same fields (an
    absent or null field is a blank cell). The body may be up to
    `KOINONIA_MEMBER_IMPORT_MAX_BYTES` (20 MiB by default; other routes allow far less).

    **All or nothing**: the file is imported in one transaction. If any row is invalid (422
    `import_rejected`: `details.errors` lists `row`, `field` and `message` of the first 200,
    `details.errorCount` counts them all), the file is not readable CSV or JSON (400), or it
    has more than 50,000 rows (413 `import_too_large`), nothing is imported.

    **Idempotent by phone**: a row whose phone is already a member's updates that member, so
    the same file imported again creates nobody (its rows count as `unchanged`). Two rows
    with one phone are an error. `optInSms: false` opts a member out; an import never opts a
    member back in (a member's STOP stands until the member texts START or a user edits the
    member). New members and opt-outs go into the consent history (source `import`).
    """
    limit = get_state().settings.member_import_max_bytes
    mimetype = request.mimetype
    if mimetype == "application/json":
        with await _spooled_body(limit) as spool:
            return await _import(member_import.json_rows(spool.read()), [])
    if mimetype == "multipart/form-data":
        upload = (await request.files).get("file")
        if upload is None:
            raise BadRequest("Upload the CSV file as the form field 'file'.")
        with upload.stream:
            source = member_import.open_csv(upload.stream)
            return await _import(source.rows, source.ignored_columns)
    if mimetype in CSV_TYPES:
        with await _spooled_body(limit) as spool:
            source = member_import.open_csv(spool)
            return await _import(source.rows, source.ignored_columns)
    raise UnsupportedMediaType(
        "Send the members as text/csv, as a multipart/form-data upload (field 'file'), or "
        'as application/json {"members": [...]}.'
    )


async def _import(rows: Iterable[tuple[int, Any]], ignored: list[str]) -> dict[str, Any]:
    state = get_state()
    result = await member_import.import_members(
        state.cache,
        current_church_id(),
        rows,
        ignored_columns=ignored,
        default_region=state.settings.default_phone_region,
        user_id=current_user().user_id,
    )
    return result.json()
