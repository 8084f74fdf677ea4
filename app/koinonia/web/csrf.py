"""Cross-site request forgery: which browser requests may use the session cookie.

A browser attaches the session cookie to requests other sites trigger (forms, ``fetch`` with
credentials); ``SameSite=Lax`` stops most of them but not all (same-site subdomains, old
browsers). So a state-changing request (POST/PUT/PATCH/DELETE) *authenticated by the cookie*
must show it comes from our own pages:

* its ``Origin`` (or, without one, its ``Referer``) is the origin of
  ``KOINONIA_PUBLIC_BASE_URL`` or one of ``KOINONIA_CSRF_TRUSTED_ORIGINS``; or
* it sends neither and carries ``X-Requested-With``: a custom header that a cross-site form
  cannot send, and cross-site ``fetch`` cannot either without a CORS preflight we never grant.

Otherwise: 403 ``csrf_rejected``. Bearer-token requests are not affected (a browser never adds
an ``Authorization`` header on its own). Login and registration set the cookie rather than use
it; ``reject_foreign_origin`` refuses them when a browser says they come from a foreign page
(login CSRF: logging the victim into the attacker's account).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from quart import request

from koinonia.errors import Forbidden
from koinonia.settings import url_origin
from koinonia.web.state import get_state

F = TypeVar("F", bound=Callable[..., Any])

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CUSTOM_HEADER = "X-Requested-With"


class CsrfRejected(Forbidden):
    code = "csrf_rejected"
    message = (
        "Cross-site request refused: send Origin from a trusted page, "
        "X-Requested-With, or a bearer token"
    )


def _claimed_origin(headers: Any) -> str | None:
    """The origin the browser says the request comes from; ``""`` for an unusable claim
    (``Origin: null`` from sandboxed frames, a malformed Referer), ``None`` when it says
    nothing."""
    origin = headers.get("Origin")
    if origin is not None:
        return url_origin(origin) or ""
    referer = headers.get("Referer")
    if referer is not None:
        return url_origin(referer) or ""
    return None


def _trusted(origin: str) -> bool:
    return origin in get_state().settings.trusted_origins


def check_cookie_request(method: str, headers: Any) -> None:
    """For a request authenticated by the session cookie: raise ``CsrfRejected`` unless it
    is safe or shows it comes from our own pages (module docstring)."""
    if method.upper() in SAFE_METHODS:
        return
    origin = _claimed_origin(headers)
    if origin is None:
        if headers.get(CUSTOM_HEADER):
            return
        raise CsrfRejected()
    if not _trusted(origin):
        raise CsrfRejected()


def check_not_foreign(headers: Any) -> None:
    """Raise ``CsrfRejected`` when the request says it comes from a foreign page. Used for
    login/register and for WebSocket upgrades authenticated by the cookie (cross-site
    WebSocket hijacking: browsers always send ``Origin`` on the upgrade, and a foreign page
    must not read the church's live events with the victim's cookie)."""
    origin = _claimed_origin(headers)
    if origin is not None and not _trusted(origin):
        raise CsrfRejected()


def reject_foreign_origin(func: F) -> F:
    """For routes that set the session cookie (login, register): refuse a request a browser
    sent from a foreign page. Clients that send no Origin/Referer (API clients) pass."""

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_not_foreign(request.headers)
        return await func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
