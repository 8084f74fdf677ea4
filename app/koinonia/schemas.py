"""Base class for request/response bodies: snake_case in Python, camelCase on the wire.

Route modules subclass ``ApiModel``; quart-schema validates requests against it and the
OpenAPI document shows the camelCase names the original clients send.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
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
