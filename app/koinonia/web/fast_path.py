"""Two answers given before Quart's request machinery: ``GET /api/members`` (a page of the
caller's church, by page number) and ``GET /health``, which has no check and does no I/O.

Why: profiled under wrk (``bench/app_http.py --profile hello,health,cached``, py-spy), a
cached members request cost ~520-550 µs of server CPU against the bare Quart hello-world's
~340-360 µs. Quart's request handling was 30% of its samples against 17% in the
hello-world; inside it, quart-schema's query validation (10%: it builds a pydantic
``TypeAdapter`` per request) and the role-guard wrapper (14% inclusive); our hooks, request
id and metrics together were ~5%. The answer itself (a session from this process's memory,
a page from its memory or one SQL statement) costs far less. Trimming the hooks could not
take 550 µs under ~430 µs (80% of the hello-world); not running the machinery for answers
that need none of it does. The uncached numbered page (``?page=3&limit=20``) spent most of
its samples in the same machinery rather than in its SQL: answered here, its server CPU per
request went from ~810-830 µs to ~490-520 µs (``make bench-app``, hello-world ~260 µs).

``/health`` (liveness of the HTTP layer) with its hooks trimmed to one pair still cost
~50 µs of CPU more than the hello-world in-process (the app called through ASGI, no server:
routing over 73 rules, request context, hooks) and stayed under 90% of it under wrk. Its
body comes from the route's own ``health_body``, so the two answers cannot differ; it is
still answered by the same server and event loop, which is what the probe checks.

For the members page, the fast path only ever answers the success case, and only when every
check the Quart route makes passes on the same data by the same functions:

* ``GET`` (not ``HEAD``), path exactly ``/api/members``, no root path, no request body;
* a query string that is empty or a strict subset of what ``MemberListQuery`` accepts:
  ``page`` and ``limit``, each at most once, in either order, joined by one ``&``, their
  values plain decimal digits (no sign, space, leading zero or percent-encoding), then
  validated by ``MemberListQuery`` itself, so its ranges are the route's. For such a query
  quart-schema hands pydantic the same strings (one value per name, no decoding changes
  them) and gets the same numbers; anything else (a ``cursor``, another or a repeated
  name, an empty value, an out-of-range number) is Quart's, to answer or to refuse;
* a token (bearer header, else the session cookie: ``tenancy.token_from``); a cookie on a
  GET needs no CSRF proof (``csrf.SAFE_METHODS``);
* the session found in this process's session cache (``SessionCache.get``: enabled only
  while the revocation subscription is up, entry within its bound and the session's expiry);
* a church, and a role that ``allows`` ``Permission.VIEW``;
* the page from ``members.list_members_json``, the function the route calls with the same
  arguments: the first page from the cache (``X-Cache`` what it says: ``HIT``, ``MISS``,
  ``ERROR``), another page from one SQL statement (``BYPASS``).

Anything else (a session not in memory, a revoked or expired session, a role or an account
without the permission, another query, an error of any kind, the database's included) goes
on to Quart before a byte is sent, which decides it as if the fast path did not exist (a
database error thus costs the statement twice: rare, and the answer stays Quart's). The
response carries what the Quart route's does (``Content-Type``, ``Content-Length``,
``X-Cache``, ``X-Request-ID``, ``X-Served-By``), and the request is counted and logged by
the same ``RequestEdge`` under the route ``/api/members``. ``/health`` is answered only
without query string, root path or body. ``tests/test_fast_path.py`` sends the same
requests both ways and compares them.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from werkzeug.sansio.http import parse_cookie

from koinonia.routes.health import health_body
from koinonia.routes.members import MemberListQuery
from koinonia.services.members import list_members_json
from koinonia.services.permissions import Permission, allows
from koinonia.stores import sessions
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
# One ``page=`` or ``limit=`` with plain decimal digits, no leading zero.
_PAGE_PARAMETER = re.compile(rb"(page|limit)=([1-9][0-9]*)")


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
                    answer = await self._answer(route, scope)
                except Exception:
                    # Never an answer from here on an error: Quart answers it, as it would.
                    log.exception("fast path failed; answered by Quart")
                    answer = None
                if answer is not None:
                    await self._send(scope, send, route, answer, started)
                    return
        await self.inner(scope, receive, send)

    @staticmethod
    def _plain(scope: dict[str, Any]) -> bool:
        """No root path, no body: the only requests answered here."""
        return not scope.get("root_path", "") and not any(
            key.lower() in _BODY_HEADERS for key, _value in scope["headers"]
        )

    async def _answer(self, route: str, scope: dict[str, Any]) -> tuple[bytes, bytes] | None:
        """(body, ``X-Cache`` value or ``b""``) as the Quart route answers 200, or ``None``."""
        if route == HEALTH_ROUTE:
            return None if scope["query_string"] else (health_body(), b"")
        query = _members_query(scope["query_string"])
        return None if query is None else await self._members_page(scope, query)

    async def _members_page(
        self, scope: dict[str, Any], query: MemberListQuery
    ) -> tuple[bytes, bytes] | None:
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
        body, cache_status = await list_members_json(
            cache, uuid.UUID(session.church_id), limit=query.limit, page=query.page
        )
        if isinstance(body, str):
            body = body.encode()
        return body, cache_status.upper().encode()

    async def _send(
        self,
        scope: dict[str, Any],
        send: Any,
        route: str,
        answer: tuple[bytes, bytes],
        started: float,
    ) -> None:
        body, cache_status = answer
        incoming = _ScopeHeaders(scope["headers"]).get("X-Request-ID")
        request_id = self.edge.request_id(incoming)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if cache_status:
            headers.append((b"x-cache", cache_status))
        headers += [
            (b"x-request-id", request_id.encode()),
            (b"x-served-by", self.edge.served_by.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.answered += 1
        self.edge.finished("GET", scope["path"], route, 200, started)


def _members_query(query_string: bytes) -> MemberListQuery | None:
    """The query as the route validates it, for the strict subset answered here (module
    docstring); ``None`` for anything else, valid or not: Quart decides those."""
    values: dict[str, str] = {}
    for part in query_string.split(b"&") if query_string else ():
        match = _PAGE_PARAMETER.fullmatch(part)
        if match is None:
            return None
        name = match[1].decode()
        if name in values:
            return None
        values[name] = match[2].decode()
    try:
        return MemberListQuery.model_validate(values)
    except ValidationError:
        return None
