"""Administration of users over HTTP (/api/users, permission "users"), changing one's own password
(/api/me/password), and the account lock after repeated wrong passwords."""

from __future__ import annotations

import time
from typing import Any

from storage.index.users import Users
from tests.web.conftest import PASSWORD, WebArchive
from viewer_api.security import LOCK_AFTER_FAILURES

NEW_PASSWORD = "a much longer passphrase"


def _sign_in(web: WebArchive, username: str, password: str) -> Any:
    return web.anonymous.post("/api/token", data={"username": username, "password": password})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _problem(reply: Any, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json"), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["status"] == status
    return body


def _events(web: WebArchive, action: str) -> list[Any]:
    web.flush_audit()
    return [e for e in web.archive.index.audit_events(500) if e.action == action]


def test_an_admin_creates_lists_and_reads_users(web: WebArchive) -> None:
    admin = web.client("admin")
    reply = admin.post(
        "/api/users",
        json={"username": "bs.lan", "role": "radiologist", "password": NEW_PASSWORD, "full_name": "BS. Nguyễn Thị Lan"},
    )
    assert reply.status_code == 201, reply.text
    created = reply.json()
    assert created["username"] == "bs.lan" and created["role"] == "radiologist"
    assert created["full_name"] == "BS. Nguyễn Thị Lan" and created["has_password"] is True
    assert not any("hash" in key for key in created)

    listed = admin.get("/api/users").json()
    assert {u["username"] for u in listed} >= {"bs.lan", "admin1", "integration1"}
    assert "argon2" not in str(listed)
    assert admin.get("/api/users/bs.lan").json()["role"] == "radiologist"

    signed_in = _sign_in(web, "bs.lan", NEW_PASSWORD)
    assert signed_in.status_code == 200 and signed_in.json()["role"] == "radiologist"

    [event] = [e for e in _events(web, "admin.user") if e.outcome == "success"]
    assert event.actor == "admin1" and event.actor_host == "testclient"
    assert NEW_PASSWORD not in (event.detail or "") and '"bs.lan"' in event.detail


def test_bad_user_requests_are_problems_and_change_nothing(web: WebArchive) -> None:
    admin = web.client("admin")
    before = len(Users(web.archive.index).all())
    _problem(admin.post("/api/users", json={"username": "admin1", "role": "admin", "password": NEW_PASSWORD}), 409)
    _problem(admin.post("/api/users", json={"username": "x", "role": "superuser", "password": NEW_PASSWORD}), 400)
    _problem(admin.post("/api/users", json={"username": "x", "role": "clinician", "password": "short"}), 400)
    _problem(admin.post("/api/users", json={"username": "has space", "role": "clinician"}), 400)
    _problem(admin.post("/api/users", json={"username": "x", "role": "clinician", "is_god": True}), 400)
    _problem(admin.post("/api/users", content=b"not json", headers={"content-type": "application/json"}), 400)
    assert len(Users(web.archive.index).all()) == before

    _problem(admin.get("/api/users/nobody"), 404)
    _problem(admin.patch("/api/users/nobody", json={"role": "clinician"}), 404)
    _problem(admin.patch("/api/users/clinician1", json={"role": "janitor"}), 400)
    assert Users(web.archive.index).require("clinician1").role == "clinician"
    failures = [e for e in _events(web, "admin.user") if e.outcome == "failure"]
    assert len(failures) >= 3  # the 409, the invalid name and the unknown user are on record


def test_a_role_change_applies_to_tokens_already_issued(web: WebArchive) -> None:
    clinician = web.client("clinician")
    assert clinician.get("/api/users").status_code == 403
    reply = web.client("admin").patch("/api/users/clinician1", json={"role": "admin", "full_name": "BS. Trần Văn Minh"})
    assert reply.status_code == 200 and reply.json()["role"] == "admin"
    assert reply.json()["full_name"] == "BS. Trần Văn Minh"
    assert clinician.get("/api/me").json()["role"] == "admin"
    assert clinician.get("/api/users").status_code == 200


def test_disabling_a_user_stops_its_tokens_and_enabling_restores_them(web: WebArchive) -> None:
    technologist = web.client("technologist")
    assert technologist.get("/api/me").status_code == 200
    admin = web.client("admin")
    assert admin.patch("/api/users/technologist1", json={"disabled": True}).json()["disabled"] is True
    _problem(technologist.get("/api/me"), 401)
    _problem(_sign_in(web, "technologist1", PASSWORD), 401)
    assert admin.patch("/api/users/technologist1", json={"disabled": False}).status_code == 200
    assert technologist.get("/api/me").status_code == 200


def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(web: WebArchive) -> None:
    admin = web.client("admin")
    _problem(admin.patch("/api/users/admin1", json={"role": "clinician"}), 409)
    _problem(admin.patch("/api/users/admin1", json={"disabled": True}), 409)
    user = Users(web.archive.index).require("admin1")
    assert user.role == "admin" and not user.disabled
    # With a second administrator it can.
    assert admin.post("/api/users", json={"username": "admin2", "role": "admin", "password": NEW_PASSWORD}).status_code == 201
    assert admin.patch("/api/users/admin1", json={"role": "clinician"}).json()["role"] == "clinician"


def test_a_password_set_by_an_admin_ends_the_old_sessions(web: WebArchive) -> None:
    radiologist = web.client("radiologist")
    assert radiologist.get("/api/me").status_code == 200
    time.sleep(1.05)  # tokens carry whole seconds
    assert web.client("admin").patch("/api/users/radiologist1", json={"password": NEW_PASSWORD}).status_code == 200
    body = _problem(radiologist.get("/api/me"), 401)
    assert "password" in body["detail"]
    _problem(_sign_in(web, "radiologist1", PASSWORD), 401)
    assert _sign_in(web, "radiologist1", NEW_PASSWORD).status_code == 200


def test_a_user_changes_their_own_password(web: WebArchive) -> None:
    clinician = web.client("clinician")
    wrong = _problem(clinician.post("/api/me/password", json={"old_password": "not it at all", "new_password": NEW_PASSWORD}), 400)
    assert "old password" in wrong["detail"]
    _problem(clinician.post("/api/me/password", json={"old_password": PASSWORD, "new_password": "short"}), 400)
    assert _sign_in(web, "clinician1", PASSWORD).status_code == 200  # unchanged so far

    reply = clinician.post("/api/me/password", json={"old_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert reply.status_code == 200, reply.text
    fresh = reply.json()
    assert fresh["token_type"] == "bearer"
    me = web.anonymous.get("/api/me", headers=_bearer(fresh["access_token"]))
    assert me.status_code == 200 and me.json()["username"] == "clinician1"
    _problem(_sign_in(web, "clinician1", PASSWORD), 401)
    assert _sign_in(web, "clinician1", NEW_PASSWORD).status_code == 200
    outcomes = sorted(e.outcome for e in _events(web, "user.password"))
    assert outcomes == ["failure", "success"]
    assert _problem(web.anonymous.post("/api/me/password", json={"old_password": "a", "new_password": NEW_PASSWORD}), 401)


def test_a_user_without_password_cannot_sign_in_with_one(web: WebArchive) -> None:
    admin = web.client("admin")
    reply = admin.post("/api/users", json={"username": "emr", "role": "integration"})
    assert reply.status_code == 201 and reply.json()["has_password"] is False
    _problem(_sign_in(web, "emr", PASSWORD), 401)


def test_repeated_wrong_passwords_lock_the_account(web: WebArchive) -> None:
    for _ in range(LOCK_AFTER_FAILURES):
        _problem(_sign_in(web, "clinician1", "wrong password"), 401)
    locked = _problem(_sign_in(web, "clinician1", PASSWORD), 401)
    assert "locked" in locked["detail"]
    user = web.client("admin").get("/api/users/clinician1").json()
    assert user["locked_until"] is not None
    # Unknown users give the same answer as wrong passwords (no user enumeration).
    assert _problem(_sign_in(web, "nobody", "wrong password"), 401)["detail"] == "invalid user name or password"
    # An administrator's new password unlocks it.
    assert web.client("admin").patch("/api/users/clinician1", json={"password": NEW_PASSWORD}).status_code == 200
    assert _sign_in(web, "clinician1", NEW_PASSWORD).status_code == 200


def test_fewer_failures_than_the_limit_do_not_lock(web: WebArchive) -> None:
    for _ in range(LOCK_AFTER_FAILURES - 1):
        _problem(_sign_in(web, "radiologist1", "wrong password"), 401)
    assert _sign_in(web, "radiologist1", PASSWORD).status_code == 200
    # A success resets the count.
    for _ in range(LOCK_AFTER_FAILURES - 1):
        _problem(_sign_in(web, "radiologist1", "wrong password"), 401)
    assert _sign_in(web, "radiologist1", PASSWORD).status_code == 200
