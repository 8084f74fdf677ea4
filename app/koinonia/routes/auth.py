"""Registration, login/logout, the current user, password change."""

from __future__ import annotations

import uuid

from pydantic import EmailStr, Field
from quart import Blueprint, Response, jsonify
from quart_schema import document_response, tag, validate_request

from koinonia.errors import Unauthorized
from koinonia.models.core import Role, User
from koinonia.openapi import document_errors, document_no_content
from koinonia.schemas import ApiModel
from koinonia.services import auth, staff
from koinonia.stores import sessions
from koinonia.web.csrf import reject_foreign_origin
from koinonia.web.state import AppState, get_state
from koinonia.web.tenancy import current_user, require_user

bp = Blueprint("auth", __name__, url_prefix="/api/auth")


class RegisterIn(ApiModel):
    church_name: str = Field(min_length=1, max_length=200)
    email: EmailStr
    password: str = Field(min_length=8, max_length=256)
    first_name: str = Field(default="", max_length=100)
    last_name: str = Field(default="", max_length=100)


class LoginIn(ApiModel):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=256)


class AcceptInviteIn(ApiModel):
    token: str = Field(min_length=1, max_length=256, description="The invite's token")
    password: str = Field(min_length=8, max_length=256)
    first_name: str = Field(default="", max_length=100)
    last_name: str = Field(default="", max_length=100)


class ChangePasswordIn(ApiModel):
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=8, max_length=256)


class UserOut(ApiModel):
    id: uuid.UUID
    email: str
    first_name: str
    last_name: str
    role: Role
    church_id: uuid.UUID | None = Field(description="null for a platform operator")
    is_operator: bool


class SessionOut(ApiModel):
    token: str = Field(description="the session token; also set as the session cookie")
    user: UserOut


class MeOut(ApiModel):
    user: UserOut


def _session_response(result: auth.LoginResult, status: int) -> Response:
    settings = get_state().settings
    response = jsonify({"token": result.token, "user": auth.user_json(result.user)})
    response.status_code = status
    response.set_cookie(
        settings.session_cookie_name,
        result.token,
        max_age=settings.session_ttl_seconds,
        httponly=True,
        samesite="Lax",
        secure=settings.session_cookie_secure,
        path="/",
    )
    return response


def _cleared_cookie(response: Response) -> Response:
    settings = get_state().settings
    response.delete_cookie(
        settings.session_cookie_name,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=settings.session_cookie_secure,
    )
    return response


def _drop_here(state: AppState, session_ids: list[str]) -> None:
    # This process need not wait for its own pub/sub message to refuse the sessions.
    if state.revocations is not None:
        state.revocations.drop(session_ids)


@bp.post("/register")
@tag(["auth"])
@reject_foreign_origin
@validate_request(RegisterIn)
@document_response(SessionOut, 201)
@document_errors(403, 409)
async def register(data: RegisterIn) -> Response:
    """Create a church and its owner, and log the owner in."""
    state = get_state()
    _church, user = await auth.register_church(
        church_name=data.church_name,
        email=str(data.email),
        password=data.password,
        first_name=data.first_name,
        last_name=data.last_name,
    )
    result = await auth.start_session(
        state.require_redis(), user, state.settings.session_ttl_seconds
    )
    return _session_response(result, 201)


@bp.post("/invites/accept")
@tag(["auth"])
@reject_foreign_origin
@validate_request(AcceptInviteIn)
@document_response(SessionOut, 201)
@document_errors(403, 404, 409)
async def accept_invite(data: AcceptInviteIn) -> Response:
    """Accept a staff invite: create the account (the invite's email and role) in the
    inviting church, with this password, and log it in. An invite works once; an unknown,
    used, cancelled or expired one answers 404 ``invite_not_found``."""
    state = get_state()
    user = await staff.accept_invite(
        token=data.token,
        password=data.password,
        first_name=data.first_name,
        last_name=data.last_name,
    )
    result = await auth.start_session(
        state.require_redis(), user, state.settings.session_ttl_seconds
    )
    return _session_response(result, 201)


@bp.post("/login")
@tag(["auth"])
@reject_foreign_origin
@validate_request(LoginIn)
@document_response(SessionOut, 200)
@document_errors(401, 403)
async def login(data: LoginIn) -> Response:
    """Log in; after too many failures for the email, 429 with ``Retry-After`` for a while."""
    state = get_state()
    settings = state.settings
    result = await auth.login(
        state.require_redis(),
        data.email,
        data.password,
        settings.session_ttl_seconds,
        max_failures=settings.login_max_failures,
        lockout_seconds=settings.login_lockout_seconds,
    )
    return _session_response(result, 200)


@bp.post("/logout")
@tag(["auth"])
@require_user
@document_no_content
async def logout() -> Response:
    state = get_state()
    session = current_user().session
    await sessions.revoke_session(state.require_redis(), session)
    _drop_here(state, [session.session_id])
    return _cleared_cookie(Response(status=204))


@bp.get("/me")
@tag(["auth"])
@require_user
@document_response(MeOut, 200)
async def me() -> dict:
    user = await User.get_or_none(id=current_user().user_id)
    if user is None:
        raise Unauthorized("Account no longer exists")
    return {"user": auth.user_json(user)}


@bp.post("/password")
@tag(["auth"])
@require_user
@validate_request(ChangePasswordIn)
@document_no_content
async def change_password(data: ChangePasswordIn) -> Response:
    """Change the password; every session of the user (this one included) is revoked."""
    state = get_state()
    revoked = await auth.change_password(
        state.require_redis(), current_user().user_id, data.current_password, data.new_password
    )
    _drop_here(state, revoked)
    return _cleared_cookie(Response(status=204))
