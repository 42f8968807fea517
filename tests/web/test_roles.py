"""Who may do what, checked on the app itself: every route that declares a ``require_<permission>``
dependency (viewer_api.context.require) answers 401 without credentials and 403 to each role
without that permission. The routes come from the app, so routes added later are covered too;
and a route that touches data without declaring a permission fails the last test here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.convertors import FloatConvertor, IntegerConvertor

from storage.index.users import ROLES
from tests.web.conftest import WebArchive
from viewer_api.security import PERMISSIONS

# Routes anyone may call: sign-in, liveness, the API's documentation, the viewer's static page
# (its data comes from the DICOMweb routes, with the signed-in user's token).
PUBLIC_PREFIXES = ("/healthz", "/version", "/openapi.json", "/docs", "/redoc", "/api/token", "/viewer")

DUMMY_UID = "1.2.826.0.1.3680043.8.498.99"


@dataclass(frozen=True)
class Guarded:
    method: str
    path: str  # with the path parameters filled in
    template: str
    permissions: frozenset[str]


def _route_contexts(app: Any) -> Iterator[Any]:
    """The app's routes as they are served (prefixes of included routers applied)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    if iterate is not None:
        yield from iterate(app.routes)  # FastAPI with lazily included routers
    else:  # pragma: no cover - older FastAPI: routes are copied into the app's router
        yield from app.routes


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependencies(sub)


def _permissions(route: Any) -> frozenset[str]:
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return frozenset()
    names = (getattr(d.call, "__name__", "") for d in _dependencies(dependant))
    return frozenset(name.removeprefix("require_") for name in names if name.startswith("require_"))


def _fill(route: Any) -> str:
    """The route's path with a dummy value for each parameter (a UID; a number where the
    parameter is typed so)."""
    path: str = route.path_format
    for name, convertor in (getattr(route, "param_convertors", None) or {}).items():
        value = "1" if isinstance(convertor, (IntegerConvertor, FloatConvertor)) or name.startswith("frame") else DUMMY_UID
        path = path.replace("{" + name + "}", value)
    return path


def api_routes(app: Any) -> list[tuple[str, str, Any]]:
    """(method, path template, route) of every API route of the app."""
    found = []
    for context in _route_contexts(app):
        original = getattr(context, "original_route", context)
        if not isinstance(original, APIRoute):
            continue
        for method in sorted(context.methods or ()):
            if method != "HEAD":
                found.append((method, str(context.path_format), context))
    return found


def guarded_routes(app: Any) -> list[Guarded]:
    guarded = []
    for method, template, route in api_routes(app):
        permissions = _permissions(route)
        if permissions:
            guarded.append(Guarded(method, _fill(route), template, permissions))
    return guarded


def test_the_matrix_finds_the_routes(web: WebArchive) -> None:
    found = {(g.method, g.template): g.permissions for g in guarded_routes(web.app)}
    assert found[("GET", "/api/users")] == {"users"}
    assert found[("DELETE", "/api/users/{username}/api-keys/{key_id}")] == {"users"}
    assert found[("GET", "/api/audit")] == {"audit"}
    assert found[("GET", "/api/me")] == {"read"}
    assert all(p <= set(PERMISSIONS["admin"]) for p in found.values()), "a permission no role has"


def test_every_guarded_route_is_401_without_credentials(web: WebArchive) -> None:
    wrong = []
    for route in guarded_routes(web.app):
        reply = web.anonymous.request(route.method, route.path)
        ok = (
            reply.status_code == 401
            and reply.headers.get("content-type", "").startswith("application/problem+json")
            and reply.headers.get("www-authenticate", "").startswith("Bearer")
        )
        if not ok:
            wrong.append(f"{route.method} {route.template}: {reply.status_code} {reply.text[:200]}")
    assert not wrong, "\n".join(wrong)


def test_every_guarded_route_is_403_for_each_role_without_its_permission(web: WebArchive) -> None:
    wrong = []
    checked = 0
    for route in guarded_routes(web.app):
        for role in ROLES:
            if route.permissions <= PERMISSIONS[role]:
                continue
            reply = web.client(role).request(route.method, route.path)
            checked += 1
            if reply.status_code != 403 or not reply.headers.get("content-type", "").startswith("application/problem+json"):
                wrong.append(f"{route.method} {route.template} as {role}: {reply.status_code} {reply.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 4 * 8  # at least the administration and audit routes, for each other role
    web.flush_audit()
    denied = [e for e in web.archive.index.audit_events(1000) if e.action == "http.authorize" and e.outcome == "denied"]
    assert len(denied) == checked


def test_only_admin_deletes_manages_users_and_reads_the_audit_log() -> None:
    for permission in ("delete", "users", "audit"):
        assert [role for role in ROLES if permission in PERMISSIONS[role]] == ["admin"], permission
    # The EMR fetches what it names; it never lists everybody.
    assert "search_all" not in PERMISSIONS["integration"]
    assert all("read" in PERMISSIONS[role] for role in ROLES)


def test_every_non_public_route_declares_a_permission(web: WebArchive) -> None:
    missing = [
        f"{method} {template}"
        for method, template, route in api_routes(web.app)
        if not template.startswith(PUBLIC_PREFIXES) and not _permissions(route)
    ]
    assert not missing, f"routes without Depends(require(...)): {missing}"
