"""What every route shares: the archive, security, the audit trail; and the dependencies that
authenticate and authorise a request.

A route that touches patient data declares ``principal: Principal = Depends(require("read"))``
(or another permission of :data:`viewer_api.security.PERMISSIONS`); it then records what it read
or wrote with ``web.audit.record(...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from filmless.bootstrap import Archive
from filmless.settings import Settings
from storage.retrieve import Retriever
from viewer_api.audit import AuditTrail, client_host
from viewer_api.security import AuthError, Forbidden, Principal, Security

# Declared for the OpenAPI document (the "Authorize" button); the checking is Security's.
_BEARER = OAuth2PasswordBearer(tokenUrl="/api/token", auto_error=False, description="Access token or API key")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (flk_...)")


@dataclass
class Web:
    archive: Archive
    security: Security
    audit: AuditTrail
    retriever: Retriever

    @property
    def settings(self) -> Settings:
        return self.archive.settings

    def close(self) -> None:
        self.audit.close()


def current_web(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


async def get_web(request: Request) -> Web:
    """The dependency form of :func:`current_web`. Dependencies that do no blocking work are
    ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a hop that costs
    more than the work (four of them were a third of a cached rendered image's time)."""
    return current_web(request)


def base_url(request: Request) -> str:
    """The API's address as the client sees it (``public_url``, else the request's), no slash."""
    web = current_web(request)
    if web.settings.public_url:
        return web.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the request's :class:`Principal`, which must have ``permission``.
    Missing or invalid credentials: 401; a role without the permission: 403 (audited)."""

    async def dependency(
        request: Request,
        _bearer: str | None = Depends(_BEARER),
        _api_key: str | None = Depends(_API_KEY),
    ) -> Principal:
        web = current_web(request)
        try:
            # Checking a token is CPU work of a fraction of a millisecond; the index is asked
            # only every CACHE_SECONDS per user, so it runs here rather than in a thread.
            principal = web.security.authenticate(request)
        except AuthError:
            web.audit.record(
                "http.authenticate",
                "failure",
                host=client_host(request),
                detail={"method": request.method, "path": request.url.path},
            )
            raise
        if not principal.may(permission):
            web.audit.record(
                "http.authorize",
                "denied",
                principal=principal,
                host=client_host(request),
                detail={"method": request.method, "path": request.url.path, "needs": permission},
            )
            raise Forbidden(f"the role {principal.role} may not do this (needs {permission!r})")
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{permission}"
    return dependency
