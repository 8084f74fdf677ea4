"""Structured JSON logs, one object per line, carrying the request id.

The request id comes from ``X-Request-ID`` when NGINX sends one (so a request can be followed
from the load balancer to the app), otherwise a fresh one; it is echoed in the response.
"""

from __future__ import annotations

import contextvars
import logging
import re
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from quart import Quart, Response, request

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "koinonia_request_id", default=None
)

# When the current request started, for the access log (cheaper than ``g``: no proxy).
_request_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "koinonia_request_started", default=None
)

REQUEST_ID_HEADER = "X-Request-ID"
# Names the app server that answered, so operators (and the checklist's distribution test)
# can see the balancer spread requests without reading its logs.
SERVED_BY_HEADER = "X-Served-By"
# Only echo ids that look like ids: a header is attacker-controlled input.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _encode(payload: dict[str, Any]) -> str:
    # orjson, with str() for what it cannot encode (as json.dumps(default=str) did); keys
    # are not sorted and non-ASCII stays as UTF-8 (the handler writes text).
    return orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


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
        return _encode(payload)


def configure_logging(level: str = "INFO") -> None:
    # The JSON lines carry none of these, so skip gathering them for every record (the
    # logging HOWTO's "Optimization" switches; the caller's frame lookup is the dear one).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
    served_by = socket.gethostname()

    @app.before_request
    async def _assign_request_id() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER)
        valid = incoming is not None and _VALID_REQUEST_ID.match(incoming)
        request_id_var.set(incoming if valid else uuid.uuid4().hex)
        _request_started.set(time.perf_counter())

    @app.after_request
    async def _echo_request_id(response: Response) -> Response:
        request_id = request_id_var.get()
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        response.headers[SERVED_BY_HEADER] = served_by
        started = _request_started.get()
        # isEnabledFor first: with access logs off or below the level this costs nothing more.
        if access_log and started is not None and access_logger.isEnabledFor(logging.INFO):
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
