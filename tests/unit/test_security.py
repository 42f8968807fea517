"""viewer_api.security without a database: passwords, API key format, access tokens, the lock
after repeated failures, the start-up checks (initial admin; no remote access without users),
with a hand-written in-memory Users."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.requests import Request

from filmless.settings import Settings
from storage.index.users import ROLES, ApiKey, User, UserError
from viewer_api import security
from viewer_api.security import (
    AuthError,
    Security,
    check_remote_access,
    ensure_initial_admin,
    hash_password,
    new_api_key,
    verify_password,
)

SECRET = "s" * 40
PASSWORD = "correct horse battery"


class MemoryUsers:
    """The part of storage.index.users.Users that Security and the start-up checks use."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.keys: dict[str, ApiKey] = {}
        self.keys_used: list[str] = []

    def add(self, username: str, role: str, password_hash: str | None, *, full_name: str = "") -> User:
        if username in self.users:
            raise UserError(f"user {username!r} exists already")
        now = datetime.now(UTC)
        user = User(len(self.users) + 1, username, full_name, role, password_hash, False, 0, None, None, now, now)
        self.users[username] = user
        return user

    def get(self, username: str) -> User | None:
        return self.users.get(username)

    def count(self, *, enabled_only: bool = False) -> int:
        return sum(1 for u in self.users.values() if not (enabled_only and u.disabled))

    def change(self, username: str, **values: Any) -> None:
        self.users[username] = replace(self.users[username], **values)

    def login_failed(self, username: str, *, lock_after: int, lock_for: timedelta) -> None:
        user = self.users.get(username)
        if user is None:
            return
        failures = user.failed_logins + 1
        if failures >= lock_after:
            self.change(username, failed_logins=0, locked_until=datetime.now(UTC) + lock_for)
        else:
            self.change(username, failed_logins=failures)

    def login_succeeded(self, username: str) -> None:
        self.change(username, failed_logins=0, locked_until=None, last_login_at=datetime.now(UTC))

    def get_key(self, key_id: str) -> ApiKey | None:
        return self.keys.get(key_id)

    def key_used(self, key_id: str) -> None:
        self.keys_used.append(key_id)


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data=tmp_path, jwt_secret=SECRET, **values)


def _security(tmp_path: Path, users: MemoryUsers, **values: Any) -> Security:
    made = Security(index=None, settings=_settings(tmp_path, **values))  # type: ignore[arg-type]
    made.users = users  # type: ignore[assignment]
    return made


def _request(**headers: str) -> Request:
    raw = [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


@pytest.fixture
def users() -> MemoryUsers:
    made = MemoryUsers()
    made.add("bs.lan", "radiologist", hash_password(PASSWORD))
    made.add("his", "integration", None)
    return made


# --- roles --------------------------------------------------------------------------------------
def test_every_role_has_permissions_and_only_admin_administers() -> None:
    assert set(security.PERMISSIONS) == set(ROLES)
    for permission in ("delete", "users", "audit"):
        assert {r for r, p in security.PERMISSIONS.items() if permission in p} == {"admin"}
    assert "search_all" not in security.PERMISSIONS["integration"]
    assert security.Principal("x", "clinician", "token").may("read")
    assert not security.Principal("x", "clinician", "token").may("store")
    assert not security.Principal("x", "nosuchrole", "oidc").may("read")


# --- passwords and keys -------------------------------------------------------------------------
def test_passwords_are_argon2id_and_checked() -> None:
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert hash_password(PASSWORD) != hashed  # salted
    assert verify_password(hashed, PASSWORD)
    assert not verify_password(hashed, PASSWORD + "!")
    assert not verify_password(None, PASSWORD)
    assert not verify_password("not a hash", PASSWORD)
    with pytest.raises(UserError, match="at least"):
        hash_password("short")


def test_api_keys_have_an_id_and_a_hashed_secret() -> None:
    key, key_id, digest = new_api_key()
    assert key.startswith(f"flk_{key_id}_")
    secret = key.removeprefix(f"flk_{key_id}_")
    assert len(secret) >= 40 and secret not in digest and len(digest) == 64
    assert security._split_api_key(key) == (key_id, secret)
    for malformed in ("flk_", "flk_abc", "flk__secret", "flk_abc_", "abc_def"):
        assert security._split_api_key(malformed) is None
    assert new_api_key()[1] != key_id


# --- access tokens ------------------------------------------------------------------------------
def test_a_token_names_the_user_with_its_current_role(tmp_path: Path, users: MemoryUsers) -> None:
    checker = _security(tmp_path, users)
    user = checker.login("bs.lan", PASSWORD)
    token, lifetime = checker.issue_token(user)
    assert lifetime == 3600
    principal = checker.authenticate(_request(authorization=f"Bearer {token}"))
    assert (principal.username, principal.role, principal.via) == ("bs.lan", "radiologist", "token")
    users.change("bs.lan", role="clinician")
    checker.forget()
    assert checker.authenticate(_request(authorization=f"Bearer {token}")).role == "clinician"
    users.change("bs.lan", disabled=True)
    checker.forget()
    with pytest.raises(AuthError, match="disabled"):
        checker.authenticate(_request(authorization=f"Bearer {token}"))


@pytest.mark.parametrize("case", ["other secret", "expired", "alg none", "other issuer", "no sub", "unknown user", "old password"])
def test_bad_tokens_are_refused(tmp_path: Path, users: MemoryUsers, case: str) -> None:
    checker = _security(tmp_path, users)
    now = int(time.time())
    claims: dict[str, Any] = {"iss": "filmless", "sub": "bs.lan", "iat": now, "exp": now + 60}
    key = SECRET
    if case == "other secret":
        key = "t" * 40
    elif case == "expired":
        claims.update(iat=now - 120, exp=now - 60)
    elif case == "other issuer":
        claims["iss"] = "someone"
    elif case == "no sub":
        del claims["sub"]
    elif case == "unknown user":
        claims["sub"] = "nobody"
    elif case == "old password":
        claims["iat"] = now - 10
        users.change("bs.lan", password_changed_at=datetime.now(UTC))
    if case == "alg none":
        token = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    else:
        token = jwt.encode(claims, key, algorithm="HS256")
    with pytest.raises(AuthError):
        checker.authenticate(_request(authorization=f"Bearer {token}"))


def test_no_or_foreign_credentials(tmp_path: Path, users: MemoryUsers) -> None:
    checker = _security(tmp_path, users)
    with pytest.raises(AuthError, match="needs a bearer token"):
        checker.authenticate(_request())
    with pytest.raises(AuthError, match="needs a bearer token"):
        checker.authenticate(_request(authorization="Basic YWRtaW46YWRtaW4="))
    with pytest.raises(AuthError, match="malformed"):
        checker.authenticate(_request(authorization="Bearer not.a.jwt"))


# --- sign-in and the lock -----------------------------------------------------------------------
def test_sign_in_locks_after_repeated_failures(tmp_path: Path, users: MemoryUsers) -> None:
    checker = _security(tmp_path, users)
    for _ in range(security.LOCK_AFTER_FAILURES):
        with pytest.raises(AuthError, match="invalid user name or password"):
            checker.login("bs.lan", "wrong")
    with pytest.raises(AuthError, match="locked"):
        checker.login("bs.lan", PASSWORD)
    users.change("bs.lan", locked_until=datetime.now(UTC) - timedelta(seconds=1))  # the lock ran out
    assert checker.login("bs.lan", PASSWORD).username == "bs.lan"
    with pytest.raises(AuthError, match="invalid user name or password"):
        checker.login("nobody", PASSWORD)
    with pytest.raises(AuthError, match="invalid user name or password"):
        checker.login("his", PASSWORD)  # no password: API keys only


# --- API keys -----------------------------------------------------------------------------------
def test_api_key_checks(tmp_path: Path, users: MemoryUsers) -> None:
    checker = _security(tmp_path, users)
    key, key_id, digest = new_api_key()
    now = datetime.now(UTC)
    users.keys[key_id] = ApiKey(key_id, digest, "his", "HIS", now, None, None, None)
    principal = checker.authenticate(_request(x_api_key=key))
    assert (principal.username, principal.role, principal.via, principal.key_id) == ("his", "integration", "api_key", key_id)
    assert checker.authenticate(_request(authorization=f"Bearer {key}")) == principal
    assert users.keys_used == [key_id]  # recorded at most once a minute

    with pytest.raises(AuthError, match="invalid API key"):
        checker.authenticate(_request(x_api_key=key[:-1] + ("A" if key[-1] != "A" else "B")))
    users.keys[key_id] = replace(users.keys[key_id], expires_at=now - timedelta(seconds=1))
    checker.forget()
    with pytest.raises(AuthError, match="expired"):
        checker.authenticate(_request(x_api_key=key))
    users.keys[key_id] = replace(users.keys[key_id], expires_at=None, revoked_at=now)
    checker.forget()
    with pytest.raises(AuthError, match="revoked"):
        checker.authenticate(_request(x_api_key=key))


def test_checked_credentials_are_cached_for_a_while(tmp_path: Path, users: MemoryUsers) -> None:
    checker = _security(tmp_path, users)
    token, _ = checker.issue_token(checker.login("bs.lan", PASSWORD))
    checker.authenticate(_request(authorization=f"Bearer {token}"))
    users.change("bs.lan", disabled=True)
    # Within CACHE_SECONDS the cached user still counts; forget() (or the time) ends it.
    assert checker.authenticate(_request(authorization=f"Bearer {token}")).username == "bs.lan"
    checker.forget()
    with pytest.raises(AuthError):
        checker.authenticate(_request(authorization=f"Bearer {token}"))


# --- OIDC claims --------------------------------------------------------------------------------
def test_claims_by_dotted_path() -> None:
    claims = {"realm_access": {"roles": ["admin"]}, "roles": "clinician", "a": {"b": "text"}}
    assert security._claim(claims, "realm_access.roles") == ["admin"]
    assert security._claim(claims, "roles") == "clinician"
    assert security._claim(claims, "a.b.c") is None
    assert security._claim(claims, "missing.path") is None


# --- start-up -----------------------------------------------------------------------------------
def test_the_initial_admin_is_made_once_and_only_when_asked(tmp_path: Path) -> None:
    empty = MemoryUsers()
    assert not ensure_initial_admin(empty, Settings(data=tmp_path))  # type: ignore[arg-type]
    assert not ensure_initial_admin(empty, Settings(data=tmp_path, initial_admin_password=""))  # type: ignore[arg-type]
    assert empty.count() == 0
    assert ensure_initial_admin(empty, Settings(data=tmp_path, initial_admin_password=PASSWORD))  # type: ignore[arg-type]
    admin = empty.get("admin")
    assert admin is not None and admin.role == "admin" and verify_password(admin.password_hash, PASSWORD)
    assert not ensure_initial_admin(empty, Settings(data=tmp_path, initial_admin_password="another password"))  # type: ignore[arg-type]
    assert verify_password(empty.get("admin").password_hash, PASSWORD)  # type: ignore[union-attr]


def test_remote_access_needs_a_user_who_can_sign_in(tmp_path: Path) -> None:
    nobody = MemoryUsers()
    remote = Settings(data=tmp_path, http_host="0.0.0.0")
    with pytest.raises(SystemExit, match="refusing to serve the HTTP API on 0.0.0.0: no user exists"):
        check_remote_access(nobody, remote)  # type: ignore[arg-type]
    # Loopback only: fine without users.
    for host in ("127.0.0.1", "localhost", "::1"):
        check_remote_access(nobody, Settings(data=tmp_path, http_host=host))  # type: ignore[arg-type]
    # An external issuer signs people in.
    check_remote_access(nobody, Settings(data=tmp_path, http_host="0.0.0.0", oidc_issuer="https://kc.example/realms/h"))  # type: ignore[arg-type]
    # Disabled users do not count.
    nobody.add("admin", "admin", hash_password(PASSWORD))
    check_remote_access(nobody, remote)  # type: ignore[arg-type]
    nobody.change("admin", disabled=True)
    with pytest.raises(SystemExit):
        check_remote_access(nobody, remote)  # type: ignore[arg-type]


def test_a_too_short_initial_admin_password_stops_start_up(tmp_path: Path) -> None:
    empty = MemoryUsers()
    with pytest.raises(SystemExit, match="initial_admin_password: a password has at least 8"):
        ensure_initial_admin(empty, Settings(data=tmp_path, initial_admin_password="short"))  # type: ignore[arg-type]
    assert empty.count() == 0
