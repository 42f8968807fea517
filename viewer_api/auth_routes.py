"""Signing in and the people of the API: the OAuth2 password flow (``POST /api/token``), who am
I (``GET /api/me``, ``POST /api/me/password``), and the administration of users and their API
keys (``/api/users...``, permission ``users``).

Every change is written to the audit log before the answer (``admin.user``, ``admin.api_key``,
``user.password``); a password or an API key secret never is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Form, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from storage.index.users import MAX_FULL_NAME, MAX_KEY_DESCRIPTION, MAX_USERNAME, ROLES, ApiKey, UnknownUser, User, UserError
from viewer_api.audit import client_host
from viewer_api.context import Web, get_web, require
from viewer_api.errors import Problem
from viewer_api.security import (
    MIN_PASSWORD_LENGTH,
    PERMISSIONS,
    AuthError,
    Principal,
    hash_password,
    new_api_key,
)

router = APIRouter()

Role = Literal["admin", "radiologist", "clinician", "technologist", "integration"]
assert set(get_args(Role)) == set(ROLES)

_Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)]
_UserName = Annotated[str, Path(min_length=1, max_length=MAX_USERNAME, description="The user name")]


# --- bodies and answers (documented in the OpenAPI schema) -------------------------------------
class NewUser(BaseModel):
    """A user to create. Without a password the user signs in with API keys only (a system
    such as the EMR)."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=MAX_USERNAME, examples=["bs.lan"])
    role: Role
    password: _Password | None = None
    full_name: str = Field("", max_length=MAX_FULL_NAME, examples=["BS. Nguyễn Thị Lan"])


class UserChange(BaseModel):
    """What to change of a user; absent fields stay as they are."""

    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    disabled: bool | None = None
    full_name: str | None = Field(None, max_length=MAX_FULL_NAME)
    password: _Password | None = None


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old_password: str = Field(max_length=1024)
    new_password: _Password


class NewApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field("", max_length=MAX_KEY_DESCRIPTION, examples=["EMR (HIS) of the hospital"])
    expires_days: int | None = Field(None, ge=1, le=3650, description="Days until the key stops working; none: never")


class UserOut(BaseModel):
    username: str
    full_name: str
    role: str
    disabled: bool
    has_password: bool
    locked_until: str | None
    last_login_at: str | None
    password_changed_at: str | None
    created_at: str | None


class ApiKeyOut(BaseModel):
    key_id: str
    username: str
    description: str
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="The whole key (flk_...): shown this once, never again")


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    role: str


def _user_out(user: User) -> UserOut:
    return UserOut(**user.public(), has_password=user.password_hash is not None)


def _key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(**key.public())


# --- signing in ----------------------------------------------------------------------------
@router.post(
    "/token",
    summary="Sign in: an access token for a user name and password (OAuth2 password flow)",
    responses={401: {"description": "Wrong user name or password, locked or disabled account"}},
)
def token(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    web: Web = Depends(get_web),
) -> dict[str, Any]:
    try:
        user = web.security.login(username, password)
    except AuthError as exc:
        web.audit.record(
            "http.login", "failure", actor=username, host=client_host(request), detail={"reason": str(exc)}, sync=True
        )
        raise
    access_token, lifetime = web.security.issue_token(user)
    web.audit.record("http.login", "success", actor=user.username, host=client_host(request), sync=True)
    return {"access_token": access_token, "token_type": "bearer", "expires_in": lifetime, "role": user.role}


@router.get("/me", summary="The user the request's credential names, and what the role may do")
def me(principal: Principal = Depends(require("read"))) -> dict[str, Any]:
    return {
        "username": principal.username,
        "role": principal.role,
        "via": principal.via,
        "permissions": sorted(PERMISSIONS[principal.role]),
    }


@router.post(
    "/me/password",
    summary="Change one's own password (the old one is asked again); other sessions end",
    response_model=TokenOut,
    responses={400: {"description": "Wrong old password, or a new one that is too short"}},
)
def change_own_password(
    body: PasswordChange,
    request: Request,
    principal: Principal = Depends(require("read")),
    web: Web = Depends(get_web),
) -> TokenOut:
    host = client_host(request)
    if principal.via == "oidc":
        raise Problem(400, "Invalid user operation", "this account's password is kept by the OIDC issuer")
    user = web.security.users.get(principal.username)
    if user is None or user.password_hash is None:
        raise Problem(400, "Invalid user operation", "this account has no password (it signs in with API keys)")
    try:
        # Counts as a sign-in attempt: wrong old passwords lock the account like wrong sign-ins.
        web.security.login(principal.username, body.old_password)
    except AuthError as exc:
        web.audit.record("user.password", "failure", principal=principal, host=host, detail={"reason": str(exc)}, sync=True)
        raise Problem(400, "Invalid password", f"the old password is not right ({exc})") from exc
    web.security.users.set_password(principal.username, hash_password(body.new_password))
    web.security.forget()
    web.audit.record("user.password", "success", principal=principal, host=host, sync=True)
    fresh = web.security.users.require(principal.username)
    access_token, lifetime = web.security.issue_token(fresh)
    return TokenOut(access_token=access_token, expires_in=lifetime, role=fresh.role)


# --- administration (permission "users") ------------------------------------------------------
@contextlib.contextmanager
def _audited(web: Web, request: Request, principal: Principal, action: str, detail: dict[str, Any]) -> Iterator[None]:
    """Record ``action`` as a success when the block completes, else as a failure (an unknown
    user or key becomes a 404 problem)."""
    host = client_host(request)
    try:
        yield
    except (UserError, Problem) as exc:
        web.audit.record(action, "failure", principal=principal, host=host, detail={**detail, "error": str(exc)}, sync=True)
        if isinstance(exc, UnknownUser):
            raise Problem(404, "Not found", str(exc)) from exc
        raise
    web.audit.record(action, "success", principal=principal, host=host, detail=detail, sync=True)


def _require_user(web: Web, username: str) -> User:
    user = web.security.users.get(username)
    if user is None:
        raise Problem(404, "Not found", f"no user {username!r}")
    return user


@router.get("/users", summary="Every user (administrators)", response_model=list[UserOut])
def list_users(principal: Principal = Depends(require("users")), web: Web = Depends(get_web)) -> list[UserOut]:
    return [_user_out(u) for u in web.security.users.all()]


@router.post(
    "/users",
    summary="Create a user (administrators)",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses={400: {"description": "Invalid name, role or password"}, 409: {"description": "The name is taken"}},
)
def create_user(
    body: NewUser, request: Request, principal: Principal = Depends(require("users")), web: Web = Depends(get_web)
) -> UserOut:
    detail = {"op": "add", "user": body.username, "role": body.role}
    with _audited(web, request, principal, "admin.user", detail):
        if web.security.users.get(body.username) is not None:
            raise Problem(409, "Conflict", f"user {body.username!r} exists already")
        password_hash = hash_password(body.password) if body.password is not None else None
        user = web.security.users.add(body.username, body.role, password_hash, full_name=body.full_name)
    web.security.forget()
    return _user_out(user)


@router.get("/users/{username}", summary="One user (administrators)", response_model=UserOut)
def get_user(
    username: _UserName, principal: Principal = Depends(require("users")), web: Web = Depends(get_web)
) -> UserOut:
    return _user_out(_require_user(web, username))


@router.patch(
    "/users/{username}",
    summary="Change a user's role, name, password, or disable/enable it (administrators)",
    response_model=UserOut,
    responses={409: {"description": "The change would leave no enabled administrator"}},
)
def change_user(
    username: _UserName,
    body: UserChange,
    request: Request,
    principal: Principal = Depends(require("users")),
    web: Web = Depends(get_web),
) -> UserOut:
    users = web.security.users
    changed = sorted(body.model_dump(exclude_unset=True))
    detail: dict[str, Any] = {"op": "change", "user": username, "changed": changed}
    if body.role is not None:
        detail["role"] = body.role
    if body.disabled is not None:
        detail["disabled"] = body.disabled
    with _audited(web, request, principal, "admin.user", detail):
        user = _require_user(web, username)
        loses_admin = user.role == "admin" and not user.disabled and (
            (body.role is not None and body.role != "admin") or body.disabled is True
        )
        if loses_admin and users.enabled_admins() == [username]:
            raise Problem(409, "Conflict", f"{username!r} is the last enabled administrator; make another one first")
        if body.full_name is not None:
            users.set_full_name(username, body.full_name)
        if body.role is not None and body.role != user.role:
            users.set_role(username, body.role)
        if body.disabled is not None and body.disabled != user.disabled:
            users.set_disabled(username, body.disabled)
        if body.password is not None:
            users.set_password(username, hash_password(body.password))
    web.security.forget()
    return _user_out(_require_user(web, username))


@router.get("/users/{username}/api-keys", summary="A user's API keys (administrators)", response_model=list[ApiKeyOut])
def list_api_keys(
    username: _UserName, principal: Principal = Depends(require("users")), web: Web = Depends(get_web)
) -> list[ApiKeyOut]:
    _require_user(web, username)
    return [_key_out(k) for k in web.security.users.list_keys(username)]


@router.post(
    "/users/{username}/api-keys",
    summary="A new API key for a user (administrators); the answer shows the key this once",
    status_code=status.HTTP_201_CREATED,
    response_model=NewApiKeyOut,
)
def create_api_key(
    username: _UserName,
    request: Request,
    body: NewApiKey | None = None,
    principal: Principal = Depends(require("users")),
    web: Web = Depends(get_web),
) -> NewApiKeyOut:
    body = body or NewApiKey(description="", expires_days=None)
    expires_at = datetime.now(UTC) + timedelta(days=body.expires_days) if body.expires_days else None
    key, key_id, secret_sha256 = new_api_key()
    detail: dict[str, Any] = {"op": "add", "user": username, "key_id": key_id, "expires_days": body.expires_days}
    with _audited(web, request, principal, "admin.api_key", detail):
        _require_user(web, username)
        stored = web.security.users.add_key(
            username, key_id, secret_sha256, description=body.description, expires_at=expires_at
        )
    return NewApiKeyOut(**stored.public(), key=key)


@router.delete(
    "/users/{username}/api-keys/{key_id}",
    summary="Revoke an API key (administrators); it stops working at once",
    response_model=ApiKeyOut,
)
def revoke_api_key(
    username: _UserName,
    key_id: Annotated[str, Path(min_length=1, max_length=32)],
    request: Request,
    principal: Principal = Depends(require("users")),
    web: Web = Depends(get_web),
) -> ApiKeyOut:
    with _audited(web, request, principal, "admin.api_key", {"op": "revoke", "user": username, "key_id": key_id}):
        key = web.security.users.revoke_key(key_id, username=username)
    web.security.forget()
    return _key_out(key)
