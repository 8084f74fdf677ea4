"""What every HTTP response carries and every request is counted by, whichever way it came in.

A request gets an id (``X-Request-ID`` from NGINX when it looks like one, so a request can be
followed from the balancer to the app, otherwise a fresh one), echoed in the response with
``X-Served-By`` (the host that answered); it is counted in the Prometheus metrics by route
template, method and status; and, when ``KOINONIA_ACCESS_LOG`` is on (direct access to the
app; NGINX logs each request with its id otherwise), it gets one JSON access-log line.

Both ways into the app use this one ``RequestEdge``: Quart's (``install``: one
before-request and one after-request hook, not one pair per concern, since every hook is
a call Quart makes for every request) and the warm-read fast path (``web/fast_path.py``).
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import socket
import time

from quart import Quart, Response, request

from koinonia.logging import REQUEST_ID_HEADER, SERVED_BY_HEADER, request_id_var
from koinonia.metrics import Metrics

# Only echo ids that look like ids: a header is attacker-controlled input.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

UNMATCHED_ROUTE = "unmatched"

# The current request's id and when it started (a context variable: cheaper than ``g`` or an
# attribute of ``request``, both reached through a proxy).
_current_request: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar(
    "koinonia_current_request", default=None
)


def new_request_id() -> str:
    # 32 hex digits, as uuid4().hex was, without building a UUID object per request.
    return secrets.token_hex(16)


class RequestEdge:
    def __init__(self, metrics: Metrics, *, access_log: bool, served_by: str | None = None) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.access_logger = logging.getLogger("koinonia.access")
        self.served_by = served_by or socket.gethostname()

    def request_id(self, incoming: str | None) -> str:
        """The id of this request (``incoming``: its X-Request-ID header, if any); also set
        for the log lines written while it is handled."""
        request_id = (
            incoming
            if incoming is not None and _VALID_REQUEST_ID.match(incoming)
            else new_request_id()
        )
        request_id_var.set(request_id)
        return request_id

    def finished(self, method: str, path: str, route: str, status: int, started: float) -> None:
        """Count a finished request, and log it when access logs are on."""
        duration = time.perf_counter() - started
        self.metrics.observe_request(route, method, status, duration)
        # isEnabledFor first: with access logs off or below the level this costs nothing more.
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            self.access_logger.info(
                "request",
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "durationMs": round(duration * 1000, 2),
                },
            )

    def install(self, app: Quart) -> None:
        """The hooks of Quart's way in."""
        edge = self

        @app.before_request
        async def _request_started() -> None:
            request_id = edge.request_id(request.headers.get(REQUEST_ID_HEADER))
            _current_request.set((request_id, time.perf_counter()))

        @app.after_request
        async def _request_finished(response: Response) -> Response:
            started = _current_request.get()
            if started is None:  # a hook before ours failed: nothing to echo or time
                response.headers[SERVED_BY_HEADER] = edge.served_by
                return response
            request_id, at = started
            response.headers[REQUEST_ID_HEADER] = request_id
            response.headers[SERVED_BY_HEADER] = edge.served_by
            rule = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
            edge.finished(request.method, request.path, rule, response.status_code, at)
            return response
