"""Signing in: the OAuth2 password flow (``POST /api/token``) and who am I (``GET /api/me``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request

from viewer_api.audit import client_host
from viewer_api.context import Web, get_web, require
from viewer_api.security import AuthError, Principal

router = APIRouter()


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
    from viewer_api.security import PERMISSIONS

    return {
        "username": principal.username,
        "role": principal.role,
        "via": principal.via,
        "permissions": sorted(PERMISSIONS[principal.role]),
    }
