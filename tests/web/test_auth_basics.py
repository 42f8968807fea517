"""The token endpoint and the authentication dependency (the foundation of every web route)."""

from __future__ import annotations

from tests.web.conftest import PASSWORD, WebArchive


def test_token_for_a_user_and_me(web: WebArchive) -> None:
    reply = web.anonymous.post("/api/token", data={"username": "radiologist1", "password": PASSWORD})
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "bearer" and body["access_token"]
    me = web.anonymous.get("/api/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json()["role"] == "radiologist"


def test_wrong_password_is_401_problem_and_audited(web: WebArchive) -> None:
    reply = web.anonymous.post("/api/token", data={"username": "radiologist1", "password": "wrong password"})
    assert reply.status_code == 401
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json()["title"] == "Unauthorized"
    actions = [(e.action, e.outcome, e.actor) for e in web.archive.index.audit_events(20)]
    assert ("http.login", "failure", "radiologist1") in actions


def test_no_token_is_401_and_garbage_token_is_401(web: WebArchive) -> None:
    assert web.anonymous.get("/api/me").status_code == 401
    reply = web.anonymous.get("/api/me", headers={"Authorization": "Bearer not-a-token"})
    assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")


def test_unknown_route_is_a_problem(web: WebArchive) -> None:
    reply = web.client().get("/no/such/route")
    assert reply.status_code == 404
    assert reply.headers["content-type"].startswith("application/problem+json")
