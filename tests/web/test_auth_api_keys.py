"""API keys, the credentials of systems such as the EMR: made by an administrator
(/api/users/{name}/api-keys), sent as a bearer token or in X-API-Key, stopped by revocation,
expiry or the user's being disabled."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.index.users import Users
from tests.web.conftest import WebArchive
from viewer_api.security import CACHE_SECONDS, new_api_key


def _new_key(web: WebArchive, username: str = "integration1", **body: Any) -> dict[str, Any]:
    reply = web.client("admin").post(f"/api/users/{username}/api-keys", json=body or {"description": "EMR"})
    assert reply.status_code == 201, reply.text
    made: dict[str, Any] = reply.json()
    return made


def _me(web: WebArchive, headers: dict[str, str]) -> Any:
    return web.anonymous.get("/api/me", headers=headers)


def test_a_key_works_as_bearer_and_as_x_api_key_and_is_shown_once(web: WebArchive) -> None:
    made = _new_key(web, description="EMR of the hospital", expires_days=30)
    key = made["key"]
    assert key.startswith(f"flk_{made['key_id']}_")
    assert made["username"] == "integration1" and made["revoked_at"] is None
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)

    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        reply = _me(web, headers)
        assert reply.status_code == 200, reply.text
        assert reply.json() | {"permissions": None} == {
            "username": "integration1",
            "role": "integration",
            "via": "api_key",
            "permissions": None,
        }

    listed = web.client("admin").get("/api/users/integration1/api-keys").json()
    assert [k["key_id"] for k in listed] == [made["key_id"]]
    assert "key" not in listed[0] and key.split("_", 2)[2] not in json.dumps(listed)
    assert listed[0]["last_used_at"] is not None
    # Only a hash of the secret is in the index.
    stored = Users(web.archive.index).get_key(made["key_id"])
    assert stored is not None and key.split("_", 2)[2] not in stored.secret_sha256


def test_requests_made_with_a_key_are_audited_with_its_id(web: WebArchive) -> None:
    made = _new_key(web)
    assert web.anonymous.get("/api/users", headers={"X-API-Key": made["key"]}).status_code == 403
    web.flush_audit()
    denied = [e for e in web.archive.index.audit_events(50) if e.action == "http.authorize"]
    assert denied and denied[0].actor == "integration1"
    assert json.loads(denied[0].detail)["api_key"] == made["key_id"]


def test_wrong_and_malformed_keys_are_401(web: WebArchive) -> None:
    made = _new_key(web)
    wrong_secret = made["key"][:-4] + ("AAAA" if not made["key"].endswith("AAAA") else "BBBB")
    for key in (wrong_secret, "flk_", "flk_nothing", "flk_000000000000_whatever", made["key"] + "x"):
        reply = _me(web, {"X-API-Key": key})
        assert reply.status_code == 401, key
        assert reply.headers["content-type"].startswith("application/problem+json")


def test_a_revoked_key_stops_at_once(web: WebArchive) -> None:
    made = _new_key(web)
    headers = {"Authorization": f"Bearer {made['key']}"}
    assert _me(web, headers).status_code == 200
    reply = web.client("admin").delete(f"/api/users/integration1/api-keys/{made['key_id']}")
    assert reply.status_code == 200 and reply.json()["revoked_at"] is not None
    refused = _me(web, headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    # Revoking it again changes nothing; a key of someone else, or none, is 404.
    assert web.client("admin").delete(f"/api/users/integration1/api-keys/{made['key_id']}").status_code == 200
    assert web.client("admin").delete(f"/api/users/clinician1/api-keys/{made['key_id']}").status_code == 404
    assert web.client("admin").delete("/api/users/integration1/api-keys/000000000000").status_code == 404
    web.flush_audit()
    revokes = [
        json.loads(e.detail)["op"] for e in web.archive.index.audit_events(100) if e.action == "admin.api_key"
    ]
    assert revokes.count("revoke") == 4 and revokes.count("add") == 1


def test_an_expired_key_is_refused(web: WebArchive) -> None:
    key, key_id, secret_sha256 = new_api_key()
    Users(web.archive.index).add_key(
        "integration1", key_id, secret_sha256, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    refused = _me(web, {"X-API-Key": key})
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]


def test_a_disabled_user_s_key_stops_within_the_cache_time(web: WebArchive) -> None:
    made = _new_key(web)
    headers = {"X-API-Key": made["key"]}
    assert _me(web, headers).status_code == 200
    # Disabled by another process (the CLI): this one notices when its cache expires.
    Users(web.archive.index).set_disabled("integration1", True)
    started = time.monotonic()
    while _me(web, headers).status_code == 200:
        assert time.monotonic() - started < CACHE_SECONDS + 2, "the key still works after the cache time"
        time.sleep(0.2)
    assert _me(web, headers).status_code == 401


def test_keys_for_unknown_users_and_bad_bodies_are_problems(web: WebArchive) -> None:
    admin = web.client("admin")
    assert admin.post("/api/users/nobody/api-keys", json={}).status_code == 404
    assert admin.get("/api/users/nobody/api-keys").status_code == 404
    assert admin.post("/api/users/integration1/api-keys", json={"expires_days": 0}).status_code == 400
    assert admin.post("/api/users/integration1/api-keys", json={"description": "x" * 401}).status_code == 400
    assert Users(web.archive.index).list_keys() == []
    # No body at all: a key without description that never expires.
    reply = admin.post("/api/users/integration1/api-keys")
    assert reply.status_code == 201 and reply.json()["expires_at"] is None
