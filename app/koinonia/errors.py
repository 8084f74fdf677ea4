"""The one error shape of the API: ``{"error": {"code", "message", "details"}}``.

Domain code raises ``ApiError`` (or one of its named subclasses); the handlers registered by
``register_error_handlers`` turn it, framework HTTP errors, validation errors and anything
unexpected into that shape. An unexpected exception is logged with its traceback and answered
with a generic 500 — the client never sees a stack trace.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import asyncpg
from pydantic import ValidationError
from quart import Quart, Response, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from koinonia.stores.client import redis_unavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    status: int = 400
    code: str = "bad_request"
    message: str = "Bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.details = details
        self.code = code or self.code
        self.status = status or self.status
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(ApiError):
    status, code, message = 400, "bad_request", "Bad request"


class Unauthorized(ApiError):
    status, code, message = 401, "unauthorized", "Authentication required"


class Forbidden(ApiError):
    status, code, message = 403, "forbidden", "Not allowed"


class NotFound(ApiError):
    status, code, message = 404, "not_found", "Not found"


class Conflict(ApiError):
    status, code, message = 409, "conflict", "Conflict"


class ValidationFailed(ApiError):
    status, code, message = 422, "validation_error", "Request validation failed"


class RateLimited(ApiError):
    """429 with ``Retry-After``; ready for the rate limiter."""

    status, code, message = 429, "rate_limited", "Too many requests"

    def __init__(self, retry_after_seconds: int, message: str | None = None) -> None:
        super().__init__(
            message,
            details={"retryAfter": retry_after_seconds},
            headers={"Retry-After": str(retry_after_seconds)},
        )


class ServiceUnavailable(ApiError):
    status, code, message = 503, "service_unavailable", "Service unavailable"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # Unavailable is "try again shortly": say when, as the generic handler below does.
        self.headers.setdefault("Retry-After", str(UNAVAILABLE_RETRY_AFTER_SECONDS))


class QueueFull(ServiceUnavailable):
    """503 with ``Retry-After``: the SMS queue is at its memory high-water mark."""

    code = "queue_full"

    def __init__(self, retry_after_seconds: int, message: str) -> None:
        super().__init__(
            message,
            details={"retryAfter": retry_after_seconds},
            headers={"Retry-After": str(retry_after_seconds)},
        )


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict | None = None
) -> Response:
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def validation_details(error: Exception) -> list[dict[str, Any]]:
    """Pydantic errors reduced to field path + message (no input echo: it may hold secrets)."""
    if isinstance(error, ValidationError):
        return [
            {
                "field": ".".join(str(part) for part in item["loc"]),
                "message": item["msg"],
                "type": item["type"],
            }
            for item in error.errors(include_url=False, include_input=False)
        ]
    return [{"field": "", "message": str(error), "type": "invalid"}]


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


# Failures that mean "the database (or PgBouncer) is unreachable right now", not a bug: the
# request may succeed in a moment, on this server or another, so they answer 503 with
# Retry-After (NGINX and clients retry) instead of 500. Tortoise passes asyncpg's errors on
# unwrapped, and its own DBConnectionError is a ConnectionError.
_UNAVAILABLE = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08: PgBouncer's refusals among them
    asyncpg.CannotConnectNowError,  # the server is starting or shutting down
    asyncpg.InterfaceError,  # "connection is closed" and the like
    # A database failover (Patroni): until HAProxy routes to the new leader, a write can reach
    # the old one, now a replica. (The sessions it ends on the way arrive as class 08.)
    asyncpg.ReadOnlySQLTransactionError,
)
UNAVAILABLE_RETRY_AFTER_SECONDS = 5


def dependency_unavailable(error: BaseException) -> bool:
    """True when the error, or one it was raised from, says a dependency is unreachable."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, _UNAVAILABLE):
            return True
        # Redis unreachable, no master while Sentinel fails over, or NOREPLICAS.
        if redis_unavailable(current):
            return True
        # asyncpg reports a refused connect to several addresses as a bare OSError.
        if type(current) is OSError and "connect call failed" in str(current).lower():
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, error.details, error.headers)

    @app.errorhandler(RequestSchemaValidationError)
    async def _schema_error(error: RequestSchemaValidationError) -> Response:
        return error_response(
            422,
            "validation_error",
            "Request validation failed",
            validation_details(error.validation_error),
        )

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = error.description if status != 400 else "Malformed request"
        headers = {}
        if status == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods)
        return error_response(status, code, message or error.name, None, headers)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        if dependency_unavailable(error):
            log.warning("dependency unavailable", extra={"error": type(error).__name__})
            return error_response(
                503,
                "service_unavailable",
                "A service this request needs is unavailable; try again shortly.",
                None,
                {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
            )
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Internal server error")
