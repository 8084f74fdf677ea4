"""Who is calling, and which church they act for: decorators and accessors for routes.

Use in a route module::

    from koinonia.services.permissions import Permission
    from koinonia.web.tenancy import current_church_id, require_permission

    @bp.get("/api/things/<uuid:thing_id>")
    @require_permission(Permission.VIEW)
    async def get_thing(thing_id):
        church_id = current_church_id()
        ...

``require_user`` accepts the session by ``Authorization: Bearer <token>`` or by the session
cookie; ``require_permission(Permission.X)`` also requires a church and a role that has the
permission in ``services/permissions.py``'s table; ``require_operator`` admits platform
operators only. Unknown/expired sessions answer 401, a missing permission 403. Each
decorator marks the view with what it requires (``ACCESS_ATTRIBUTE``), which the tenancy
test reads to walk every route against the table. Websocket
handlers call ``authenticate_websocket()`` themselves. A session taken from the cookie also
passes the CSRF check of ``web/csrf.py`` (403 ``csrf_rejected``); a bearer token does
not need to.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from quart import g, request, websocket
from quart_schema import security_scheme
from redis.exceptions import RedisError

from koinonia.errors import Forbidden, ServiceUnavailable, Unauthorized
from koinonia.services.permissions import Permission, allows
from koinonia.stores import session_cache
from koinonia.stores.sessions import SessionData
from koinonia.web import csrf
from koinonia.web.state import get_state

F = TypeVar("F", bound=Callable[..., Any])

# Names of the security schemes declared on QuartSchema in app.py (OpenAPI document).
SECURITY = [{"bearerAuth": []}, {"cookieAuth": []}]

# Set on every view these decorators guard: a ``Permission``, or one of the two below.
ACCESS_ATTRIBUTE = "koinonia_access"
ANY_USER = "any-user"
OPERATOR = "operator"


@dataclass(frozen=True)
class CurrentUser:
    user_id: uuid.UUID
    church_id: uuid.UUID | None
    role: str
    is_operator: bool
    session: SessionData
    token: str


def token_from(headers: Any, cookies: Any, cookie_name: str) -> tuple[str | None, bool]:
    """The session token and whether it came from the cookie (rather than a bearer header)."""
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    token = cookies.get(cookie_name) or None
    return token, token is not None


async def _resolve(
    headers: Any, cookies: Any, csrf_check: Callable[[Any], None] | None = None
) -> CurrentUser:
    state = get_state()
    token, from_cookie = token_from(headers, cookies, state.settings.session_cookie_name)
    if token is None:
        raise Unauthorized()
    if from_cookie and csrf_check is not None:
        # Before the session lookup: a forged request learns nothing about the session.
        csrf_check(headers)
    try:
        session = await session_cache.lookup(state.require_redis(), state.session_cache, token)
    except RedisError as exc:
        # Sessions live only in Redis: without it nobody can be authenticated.
        raise ServiceUnavailable("Session store unavailable") from exc
    if session is None:
        raise Unauthorized("Session expired or revoked")
    return CurrentUser(
        user_id=uuid.UUID(session.user_id),
        church_id=uuid.UUID(session.church_id) if session.church_id else None,
        role=session.role,
        is_operator=session.is_operator,
        session=session,
        token=token,
    )


async def authenticate_request() -> CurrentUser:
    user = await _resolve(
        request.headers,
        request.cookies,
        lambda headers: csrf.check_cookie_request(request.method, headers),
    )
    g.current_user = user
    return user


async def authenticate_websocket() -> CurrentUser:
    """For ``@bp.websocket`` handlers: bearer header or session cookie of the upgrade request."""
    user = await _resolve(websocket.headers, websocket.cookies, csrf.check_not_foreign)
    g.current_user = user
    return user


def current_user() -> CurrentUser:
    user = g.get("current_user")
    if user is None:
        raise Unauthorized()
    return user  # type: ignore[no-any-return]


def current_church_id() -> uuid.UUID:
    """The church the caller acts for; 403 for an operator account without a church."""
    user = current_user()
    if user.church_id is None:
        raise Forbidden("This account does not belong to a church")
    return user.church_id


def _guarded(wrapper: Callable[..., Any], access: str) -> F:
    setattr(wrapper, ACCESS_ATTRIBUTE, access)
    return security_scheme(SECURITY)(wrapper)  # type: ignore[no-any-return]


def require_user(func: F) -> F:
    """Any logged-in user, whatever their church or role (their own account's routes)."""

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        await authenticate_request()
        return await func(*args, **kwargs)

    return _guarded(wrapper, ANY_USER)


def require_permission(permission: Permission) -> Callable[[F], F]:
    """A user of a church whose role has ``permission`` (403 otherwise, operators included)."""

    def decorator(func: F) -> F:
        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = await authenticate_request()
            if user.church_id is None:
                raise Forbidden("This account does not belong to a church")
            if not allows(user.role, permission):
                raise Forbidden(
                    f"Your role ({user.role}) does not allow this ({permission})",
                    details={"role": user.role, "permission": str(permission)},
                )
            return await func(*args, **kwargs)

        return _guarded(wrapper, permission)

    return decorator


def require_operator(func: F) -> F:
    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        user = await authenticate_request()
        if not user.is_operator:
            raise Forbidden("Platform operators only")
        return await func(*args, **kwargs)

    return _guarded(wrapper, OPERATOR)
