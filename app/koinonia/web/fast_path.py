"""Two answers given before Quart's request machinery: the warm read, ``GET /api/members``
(first page, default size) when this process already holds both the caller's session and
the page; and ``GET /health``, which has no check and does no I/O.

Why: profiled under wrk (``bench/app_http.py --profile hello,health,cached``, py-spy), a
cached members request cost ~520-550 µs of server CPU against the bare Quart hello-world's
~340-360 µs. Quart's request handling was 30% of its samples against 17% in the
hello-world; inside it, quart-schema's query validation (10%: it builds a pydantic
``TypeAdapter`` per request) and the role-guard wrapper (14% inclusive); our hooks, request
id and metrics together were ~5%. The answer itself (a session and a page from this
process's memory) is a few microseconds. Trimming the hooks could not take 550 µs under
~430 µs (80% of the hello-world); not running the machinery for the one answer that needs
none of it does.

``/health`` (liveness of the HTTP layer) with its hooks trimmed to one pair still cost
~50 µs of CPU more than the hello-world in-process (the app called through ASGI, no server:
routing over 73 rules, request context, hooks) and stayed under 90% of it under wrk. Its
body comes from the route's own ``health_body``, so the two answers cannot differ; it is
still answered by the same server and event loop, which is what the probe checks.

For the members page, the fast path only ever answers the success case, and only when every
check the Quart route makes passes on the same data by the same functions:

* ``GET`` (not ``HEAD``), path exactly ``/api/members``, no root path, no query string (the
  ``MemberListQuery`` defaults: ``limit`` 50, first page), no request body;
* a token (bearer header, else the session cookie: ``tenancy.token_from``); a cookie on a
  GET needs no CSRF proof (``csrf.SAFE_METHODS``);
* the session found in this process's session cache (``SessionCache.get``: enabled only
  while the revocation subscription is up, entry within its bound and the session's expiry);
* a church, and a role that ``allows`` ``Permission.VIEW``;
* the page found in this process's copy under its current version (``CacheService.local_hit``,
  which counts the hit as the Quart path does).

Anything else (a session or page not in memory, a revoked or expired session, another
church's page, a role without the permission, a query string, an error) goes on to Quart,
which decides it as if the fast path did not exist. The response carries what the Quart
route's does (``Content-Type``, ``Content-Length``, ``X-Cache: HIT``, ``X-Request-ID``,
``X-Served-By``), and the request is counted and logged by the same ``RequestEdge``. Both
answers are given only for a ``GET`` without query string, root path or body.
``tests/test_fast_path.py`` sends the same requests both ways and compares them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from werkzeug.sansio.http import parse_cookie

from koinonia.routes.health import health_body
from koinonia.services.members import DEFAULT_PAGE_SIZE, first_page_key
from koinonia.services.permissions import Permission, allows
from koinonia.stores import sessions
from koinonia.stores.cache import MEMBERS
from koinonia.web.edge import RequestEdge
from koinonia.web.state import AppState
from koinonia.web.tenancy import token_from

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

# Path -> the route template the Quart path counts the request under.
MEMBERS_ROUTE = "/api/members"
HEALTH_ROUTE = "/health"
ROUTES = {"/api/members": MEMBERS_ROUTE, "/health": HEALTH_ROUTE}
_BODY_HEADERS = (b"content-length", b"transfer-encoding")


class _ScopeHeaders:
    """The request's headers as Quart reads them (latin-1, first value of a name), for
    ``tenancy.token_from``."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str, default: str | None = None) -> str | None:
        wanted = name.lower().encode("latin1")
        for key, value in self.raw:
            if key.lower() == wanted:
                return value.decode("latin1")
        return default

    def cookies(self) -> _LazyCookies:
        return _LazyCookies(self.raw)


class _LazyCookies:
    """Quart's ``request.cookies`` (every Cookie header, joined, parsed by werkzeug), parsed
    only when ``token_from`` needs it (no bearer token)."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str) -> str | None:
        joined = ";".join(
            value.decode("latin1") for key, value in self.raw if key.lower() == b"cookie"
        )
        return parse_cookie(joined).get(name)  # type: ignore[no-any-return]


class FastPath:
    """ASGI middleware in front of Quart's ``asgi_app`` (module docstring)."""

    def __init__(self, inner: ASGIApp, state: AppState, edge: RequestEdge) -> None:
        self.inner = inner
        self.state = state
        self.edge = edge
        self.enabled = state.settings.fast_path
        # Requests answered here: tests assert the fast path was (or was not) taken.
        self.answered = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.enabled and scope["type"] == "http" and scope["method"] == "GET":
            route = ROUTES.get(scope["path"])
            if route is not None and self._plain(scope):
                started = time.perf_counter()
                try:
                    body = health_body() if route == HEALTH_ROUTE else self._members_page(scope)
                except Exception:
                    # Never an answer from here on a surprise: Quart answers it, as it would.
                    log.exception("fast path failed; answered by Quart")
                    body = None
                if body is not None:
                    await self._send(scope, send, route, body, started)
                    return
        await self.inner(scope, receive, send)

    @staticmethod
    def _plain(scope: dict[str, Any]) -> bool:
        """No root path, no query string, no body: the only requests answered here."""
        return (
            not scope.get("root_path", "")
            and not scope["query_string"]
            and not any(key.lower() in _BODY_HEADERS for key, _value in scope["headers"])
        )

    def _members_page(self, scope: dict[str, Any]) -> bytes | None:
        """The page the Quart route would answer 200 with, or ``None`` to let it decide."""
        raw = scope["headers"]
        state = self.state
        session_cache, cache = state.session_cache, state.cache
        if session_cache is None or cache is None:
            return None
        headers = _ScopeHeaders(raw)
        token = token_from(headers, headers.cookies(), state.settings.session_cookie_name)[0]
        if token is None or not sessions.valid_token(token):
            return None
        session = session_cache.get(sessions.session_id_of(token))
        if session is None or not session.church_id:
            return None
        if not allows(session.role, Permission.VIEW):
            return None
        church_id = uuid.UUID(session.church_id)
        return cache.local_hit(MEMBERS, first_page_key(church_id, DEFAULT_PAGE_SIZE))

    async def _send(
        self, scope: dict[str, Any], send: Any, route: str, body: bytes, started: float
    ) -> None:
        incoming = _ScopeHeaders(scope["headers"]).get("X-Request-ID")
        request_id = self.edge.request_id(incoming)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if route == MEMBERS_ROUTE:
            headers.append((b"x-cache", b"HIT"))
        headers += [
            (b"x-request-id", request_id.encode()),
            (b"x-served-by", self.edge.served_by.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.answered += 1
        self.edge.finished("GET", scope["path"], route, 200, started)
