"""Base class for request/response bodies: snake_case in Python, camelCase on the wire.

Route modules subclass ``ApiModel``; quart-schema validates requests against it and the
OpenAPI document shows the camelCase names the original clients send.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        str_strip_whitespace=True,
    )


class ErrorDetail(ApiModel):
    code: str
    message: str
    details: object | None = None


class ErrorResponse(ApiModel):
    error: ErrorDetail


# E.164: "+", a country code that does not start with 0, at most 15 digits in all.
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"


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
