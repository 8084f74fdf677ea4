"""Structured JSON logs, one object per line, carrying the request id.

The request id comes from ``X-Request-ID`` when NGINX sends one (so a request can be followed
from the load balancer to the app), otherwise a fresh one; it is echoed in the response.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from quart import Quart, Response, g, request

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "koinonia_request_id", default=None
)

REQUEST_ID_HEADER = "X-Request-ID"
# Only echo ids that look like ids: a header is attacker-controlled input.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            payload["requestId"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Hypercorn/Quart keep their own handlers; route them through ours.
    for name in ("hypercorn.error", "hypercorn.access", "quart.app", "quart.serving"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


def install_request_logging(app: Quart, *, access_log: bool = True) -> None:
    access_logger = logging.getLogger("koinonia.access")

    @app.before_request
    async def _assign_request_id() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request_id_var.set(request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    async def _echo_request_id(response: Response) -> Response:
        request_id = request_id_var.get()
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("request_started")
        if access_log and started is not None:
            access_logger.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "durationMs": round((time.perf_counter() - started) * 1000, 2),
                },
            )
        return response
