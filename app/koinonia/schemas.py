"""Base class for request/response bodies: snake_case in Python, camelCase on the wire.

Route modules subclass ``ApiModel``; quart-schema validates requests against it and the
OpenAPI document shows the camelCase names the original clients send.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

from annotated_types import MinLen
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo


@cache
def _blanks() -> str:
    """The characters ``str.strip()`` removes, as escapes for a regex character class.

    Spelled out because ``\\s`` means three things: ECMA's list (the document's), Python's
    (what the app strips) and ASCII's (schemathesis reads patterns with ``re.ASCII``); a
    client must not meet a 422 for text the document allows."""
    return "".join(f"\\u{code:04x}" for code in range(sys.maxunicode + 1) if chr(code).isspace())


def _stripped_length_pattern(min_length: int) -> str:
    """A pattern for "at least ``min_length`` characters once stripped of whitespace"."""
    blank, kept = f"[{_blanks()}]", f"[^{_blanks()}]"
    if min_length <= 1:
        return kept
    return rf"^{blank}*{kept}[\s\S]{{{min_length - 2},}}{kept}{blank}*$"


def _document_stripping(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Text is stripped after its maximum length is checked and before its minimum is: a
    string property with a minimum length gets a pattern saying so (unless it has its own).
    Then the model's own ``schema_rules`` (conditions across properties) are merged in."""
    for prop in schema.get("properties", {}).values():
        for variant in [prop, *prop.get("anyOf", [])]:
            if variant.get("type") == "string" and variant.get("minLength", 0) > 0:
                variant.setdefault("pattern", _stripped_length_pattern(variant["minLength"]))
    schema.update(getattr(model, "schema_rules", {}))


def _min_length(field: FieldInfo) -> int:
    return next((m.min_length for m in field.metadata if isinstance(m, MinLen)), 0)


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        json_schema_extra=_document_stripping,
    )

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Strip text (after ``max_length``: what the document's maxLength says), then hold
        it to its field's ``min_length``; refuse U+0000, which PostgreSQL text cannot hold
        (a 422 here, not a 500 from the database)."""
        if not isinstance(value, str):
            return value
        if "\x00" in value:
            raise ValueError("must not contain the NUL character (U+0000)")
        stripped = value.strip()
        field = cls.model_fields.get(info.field_name or "")
        minimum = _min_length(field) if field is not None else 0
        if len(stripped) < minimum:
            raise ValueError(f"must have at least {minimum} characters besides spaces")
        return stripped


class ErrorDetail(ApiModel):
    code: str
    message: str
    details: object | None = None


class ErrorResponse(ApiModel):
    error: ErrorDetail


# E.164: "+", a country code that does not start with 0, at most 15 digits in all.
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
# An Idempotency-Key: 1 to 255 printable ASCII characters, no blank at either end (a header
# value's ends are trimmed on the way, so a key that had them would not be the key sent).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"


class FieldError(ApiModel):
    field: str = Field(description="the request field, dotted (`targetIds.0`); blank: the body")
    message: str
    type: str


class ValidationErrorDetail(ApiModel):
    code: str = Field(description="`validation_error`")
    message: str
    details: list[FieldError]


class ValidationErrorResponse(ApiModel):
    """422: the request's fields did not validate; one entry per field error."""

    error: ValidationErrorDetail


class Pagination(ApiModel):
    total: int
    limit: int
    offset: int
