"""Structured JSON logs, one object per line, carrying the request id.

The request id (``web/edge.py`` assigns it to each request, and echoes it in the response)
is in every line written while the request is handled.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "koinonia_request_id", default=None
)

REQUEST_ID_HEADER = "X-Request-ID"
# Names the app server that answered, so operators (and the checklist's distribution test)
# can see the balancer spread requests without reading its logs.
SERVED_BY_HEADER = "X-Served-By"

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
