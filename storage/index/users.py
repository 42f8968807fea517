"""Users and API keys of the HTTP API (schema version 4), kept in the index.

Only hashes are stored: argon2id PHC strings for passwords (made by viewer_api.security), a
sha256 of each API key's random secret. Nothing here decides who may do what; that is
viewer_api.security's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage.errors import ArchiveError, InstanceAlreadyExists
from storage.index.repository import Index, utcnow
from storage.index.schema import api_key, app_user

ROLES = ("admin", "radiologist", "clinician", "technologist", "integration")
"""The roles a user can have (what each may do: viewer_api.security.PERMISSIONS)."""


MAX_USERNAME = 64
MAX_FULL_NAME = 200
MAX_KEY_DESCRIPTION = 400


class UserError(ArchiveError):
    """A user or API key operation that cannot be done (unknown user, name taken, ...)."""


class UnknownUser(UserError):
    """No user (or API key) of that name (HTTP 404)."""


@dataclass(frozen=True)
class User:
    pk: int
    username: str
    full_name: str
    role: str
    password_hash: str | None
    disabled: bool
    failed_logins: int
    locked_until: datetime | None
    last_login_at: datetime | None
    password_changed_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> User:
        m = row._mapping
        return cls(
            pk=m["pk"],
            username=m["username"],
            full_name=m["full_name"],
            role=m["role"],
            password_hash=m["password_hash"],
            disabled=bool(m["disabled"]),
            failed_logins=m["failed_logins"],
            locked_until=_aware(m["locked_until"]),
            last_login_at=_aware(m["last_login_at"]),
            password_changed_at=_aware(m["password_changed_at"]),
            created_at=_aware(m["created_at"]) or utcnow(),
        )

    def public(self) -> dict[str, Any]:
        """What may be shown of the user (never the hash)."""
        return {
            "username": self.username,
            "full_name": self.full_name,
            "role": self.role,
            "disabled": self.disabled,
            "locked_until": _iso(self.locked_until),
            "last_login_at": _iso(self.last_login_at),
            "password_changed_at": _iso(self.password_changed_at),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    secret_sha256: str
    username: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "username": self.username,
            "description": self.description,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
        }


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes of what was stored in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=utcnow().tzinfo)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")


def check_username(username: str) -> None:
    if (
        not username
        or len(username) > MAX_USERNAME
        or any(ch.isspace() or ch in ":/\\" or not ch.isprintable() for ch in username)
    ):
        raise UserError(f"a user name is 1 to {MAX_USERNAME} characters, without spaces, ':', '/' or '\\'")


def _check_full_name(full_name: str) -> None:
    if len(full_name) > MAX_FULL_NAME:
        raise UserError(f"a full name has at most {MAX_FULL_NAME} characters")
    _check_printable("a full name", full_name)


def _check_printable(what: str, text: str) -> None:
    # Control characters (NUL above all: PostgreSQL refuses it in text) are never part of a
    # name or a description.
    if any(not ch.isprintable() for ch in text):
        raise UserError(f"{what} must not contain control characters")


_KEY_COLUMNS = (
    api_key.c.key_id,
    api_key.c.secret_sha256,
    app_user.c.username,
    api_key.c.description,
    api_key.c.created_at,
    api_key.c.expires_at,
    api_key.c.revoked_at,
    api_key.c.last_used_at,
)


class Users:
    """The users and API keys in ``index``."""

    def __init__(self, index: Index) -> None:
        self.index = index

    # --- users ---------------------------------------------------------------------------
    def count(self, *, enabled_only: bool = False) -> int:
        stmt = select(func.count()).select_from(app_user)
        if enabled_only:
            stmt = stmt.where(app_user.c.disabled.is_(False))
        with self.index.read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def add(self, username: str, role: str, password_hash: str | None, *, full_name: str = "") -> User:
        _check_role(role)
        check_username(username)
        _check_full_name(full_name)
        now = utcnow()
        try:
            with self.index.write() as conn:
                conn.execute(
                    insert(app_user).values(
                        username=username,
                        full_name=full_name,
                        role=role,
                        password_hash=password_hash,
                        disabled=False,
                        failed_logins=0,
                        password_changed_at=now if password_hash else None,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except (IntegrityError, InstanceAlreadyExists) as exc:  # Index.write translates the first
            raise UserError(f"user {username!r} exists already") from exc
        user = self.get(username)
        assert user is not None
        return user

    def get(self, username: str) -> User | None:
        if "\x00" in username:
            return None  # no name holds a NUL (and PostgreSQL refuses one as a parameter)
        with self.index.read() as conn:
            row = conn.execute(select(app_user).where(app_user.c.username == username)).first()
        return User.from_row(row) if row is not None else None

    def require(self, username: str) -> User:
        user = self.get(username)
        if user is None:
            raise UnknownUser(f"no user {username!r}")
        return user

    def all(self) -> list[User]:
        with self.index.read() as conn:
            return [User.from_row(r) for r in conn.execute(select(app_user).order_by(app_user.c.username))]

    def _update(self, username: str, **values: Any) -> None:
        values["updated_at"] = utcnow()
        with self.index.write() as conn:
            changed = conn.execute(update(app_user).where(app_user.c.username == username).values(**values)).rowcount
        if not changed:
            raise UnknownUser(f"no user {username!r}")

    def set_password(self, username: str, password_hash: str) -> None:
        self._update(
            username, password_hash=password_hash, password_changed_at=utcnow(), failed_logins=0, locked_until=None
        )

    def set_disabled(self, username: str, disabled: bool) -> None:
        self._update(username, disabled=disabled)

    def set_role(self, username: str, role: str) -> None:
        _check_role(role)
        self._update(username, role=role)

    def set_full_name(self, username: str, full_name: str) -> None:
        _check_full_name(full_name)
        self._update(username, full_name=full_name)

    def enabled_admins(self) -> list[str]:
        """The user names of the enabled administrators."""
        stmt = select(app_user.c.username).where(app_user.c.role == "admin", app_user.c.disabled.is_(False))
        with self.index.read() as conn:
            return [str(name) for name in conn.execute(stmt).scalars()]

    def login_succeeded(self, username: str) -> None:
        self._update(username, failed_logins=0, locked_until=None, last_login_at=utcnow())

    def login_failed(self, username: str, *, lock_after: int, lock_for: timedelta) -> None:
        """Count a failed password; after ``lock_after`` in a row the account locks for ``lock_for``."""
        now = utcnow()
        with self.index.write() as conn:
            row = conn.execute(select(app_user.c.failed_logins).where(app_user.c.username == username)).first()
            if row is None:
                return
            failures = int(row[0]) + 1
            values: dict[str, Any] = {"failed_logins": failures, "updated_at": now}
            if failures >= lock_after:
                values["locked_until"] = now + lock_for
                values["failed_logins"] = 0
            conn.execute(update(app_user).where(app_user.c.username == username).values(**values))

    # --- API keys ------------------------------------------------------------------------
    def add_key(
        self, username: str, key_id: str, secret_sha256: str, *, description: str = "", expires_at: datetime | None = None
    ) -> ApiKey:
        if len(description) > MAX_KEY_DESCRIPTION:
            raise UserError(f"an API key description has at most {MAX_KEY_DESCRIPTION} characters")
        _check_printable("an API key description", description)
        user = self.require(username)
        with self.index.write() as conn:
            conn.execute(
                insert(api_key).values(
                    key_id=key_id,
                    secret_sha256=secret_sha256,
                    user_pk=user.pk,
                    description=description,
                    created_at=utcnow(),
                    expires_at=expires_at,
                )
            )
        key = self.get_key(key_id)
        assert key is not None
        return key

    def _keys(self) -> Any:
        return select(*_KEY_COLUMNS).join(app_user, app_user.c.pk == api_key.c.user_pk)

    @staticmethod
    def _key(row: Any) -> ApiKey:
        m = row._mapping
        return ApiKey(
            key_id=m["key_id"],
            secret_sha256=m["secret_sha256"],
            username=m["username"],
            description=m["description"],
            created_at=_aware(m["created_at"]) or utcnow(),
            expires_at=_aware(m["expires_at"]),
            revoked_at=_aware(m["revoked_at"]),
            last_used_at=_aware(m["last_used_at"]),
        )

    def get_key(self, key_id: str) -> ApiKey | None:
        if "\x00" in key_id:
            return None
        with self.index.read() as conn:
            row = conn.execute(self._keys().where(api_key.c.key_id == key_id)).first()
        return self._key(row) if row is not None else None

    def list_keys(self, username: str | None = None) -> list[ApiKey]:
        stmt = self._keys().order_by(api_key.c.created_at)
        if username is not None:
            stmt = stmt.where(app_user.c.username == username)
        with self.index.read() as conn:
            return [self._key(r) for r in conn.execute(stmt)]

    def revoke_key(self, key_id: str, *, username: str | None = None) -> ApiKey:
        """Revoke a key (of ``username``, when given); revoking a revoked key changes nothing.
        :class:`UnknownUser` when there is no such key (of that user)."""
        key = self.get_key(key_id)
        if key is None or (username is not None and key.username != username):
            owner = f" of user {username!r}" if username is not None else ""
            raise UnknownUser(f"no API key {key_id!r}{owner}")
        if key.revoked_at is None:
            with self.index.write() as conn:
                conn.execute(
                    update(api_key)
                    .where(api_key.c.key_id == key_id, api_key.c.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
        revoked = self.get_key(key_id)
        assert revoked is not None
        return revoked

    def key_used(self, key_id: str) -> None:
        with self.index.write() as conn:
            conn.execute(update(api_key).where(api_key.c.key_id == key_id).values(last_used_at=utcnow()))
