"""Who is asking, and may they: authentication and authorisation of the HTTP API.

Three kinds of credential, all sent as ``Authorization: Bearer <credential>``:

* **access tokens** that ``POST /api/token`` issues for a user name and password (OAuth2
  password flow): JWTs signed with HS256 under ``jwt_secret``, short-lived
  (``access_token_minutes``);
* **API keys** for systems such as the EMR, ``flk_<key id>_<secret>`` (also accepted in an
  ``X-API-Key`` header): long-lived, revocable, stored as a sha256 of the secret;
* optionally, **OIDC tokens** of an external issuer (Keycloak), checked against its JWKS; the
  role comes from a claim.

A credential names a user, whose role decides what it may do (:data:`PERMISSIONS`). Disabled
users and revoked keys stop working within :data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request

from filmless.settings import Settings
from storage.index import Index
from storage.index.users import ROLES, User, UserError, Users

log = logging.getLogger("filmless.security")

PERMISSIONS: dict[str, frozenset[str]] = {
    # read: search and fetch patient data; search_all: searches that name no patient or study
    # (lists of everybody); store: STOW-RS; delete: move to the trash; audit: read the audit
    # log; users: manage users and API keys.
    "admin": frozenset({"read", "search_all", "store", "delete", "audit", "users"}),
    "radiologist": frozenset({"read", "search_all", "store"}),
    "clinician": frozenset({"read", "search_all"}),
    "technologist": frozenset({"read", "search_all", "store"}),
    # The EMR fetches what it names (a patient, a study, an accession number); it never lists.
    "integration": frozenset({"read", "store"}),
}
assert set(PERMISSIONS) == set(ROLES)

CACHE_SECONDS = 5.0
"""How long a checked user or API key is trusted before the index is asked again."""
LOCK_AFTER_FAILURES = 5
LOCK_FOR = timedelta(minutes=15)
API_KEY_PREFIX = "flk_"
_ISSUER = "filmless"
_ALGORITHM = "HS256"


class AuthError(Exception):
    """The request does not carry a valid credential (401)."""


class Forbidden(Exception):
    """The credential is valid but its role may not do this (403)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for."""

    username: str
    role: str
    via: str  # "token", "api_key" or "oidc"
    key_id: str | None = None

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


# --- passwords -----------------------------------------------------------------------------
_HASHER = PasswordHasher()  # argon2id, the library's (RFC 9106) defaults
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# --- API keys ------------------------------------------------------------------------------
def new_api_key() -> tuple[str, str, str]:
    """A new key: (the whole key to hand out once, its id, the sha256 of its secret)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{API_KEY_PREFIX}{key_id}_{secret}", key_id, _sha256(secret)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _split_api_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(API_KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def signing_key(settings: Settings) -> bytes:
    """``jwt_secret``, or a random key made once under ``<data>/secrets`` (mode 0600)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value().encode()
    path = settings.data / "secrets" / "jwt.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        with open(tmp, "x", encoding="ascii", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
            fh.write(secrets.token_urlsafe(48))
        try:
            # Two processes starting together: the first key made wins, both use it.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text(encoding="ascii").strip().encode()


class _Cache:
    """A small time-bounded cache (thread-safe)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._items: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = make()
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (now + self.seconds, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Security:
    """Checks credentials and issues access tokens for one archive."""

    def __init__(self, index: Index, settings: Settings) -> None:
        self.users = Users(index)
        self.settings = settings
        self._key = signing_key(settings)
        self._user_cache = _Cache(CACHE_SECONDS)
        self._key_cache = _Cache(CACHE_SECONDS)
        self._key_used: dict[str, float] = {}
        self._oidc = OidcVerifier(settings) if settings.oidc_issuer else None

    # --- issuing ---------------------------------------------------------------------------
    def login(self, username: str, password: str) -> User:
        """The user these credentials name, or :class:`AuthError` (the same for every failure,
        so that a caller cannot tell unknown users from wrong passwords)."""
        user = self.users.get(username)
        now = datetime.now(UTC)
        ok = verify_password(user.password_hash if user is not None else None, password)
        if user is None:
            raise AuthError("invalid user name or password")
        if user.locked_until is not None and user.locked_until > now:
            raise AuthError("account locked after repeated failed sign-ins; try again later")
        if not ok:
            self.users.login_failed(username, lock_after=LOCK_AFTER_FAILURES, lock_for=LOCK_FOR)
            raise AuthError("invalid user name or password")
        if user.disabled:
            raise AuthError("account disabled")
        self.users.login_succeeded(username)
        return user

    def issue_token(self, user: User) -> tuple[str, int]:
        """A signed access token for ``user`` and its lifetime in seconds."""
        lifetime = self.settings.access_token_minutes * 60
        now = int(time.time())
        claims = {
            "iss": _ISSUER,
            "sub": user.username,
            "role": user.role,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM), lifetime

    # --- checking --------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Principal:
        credential = _credential(request)
        if credential is None:
            raise AuthError("this resource needs a bearer token (POST /api/token) or an API key")
        if credential.startswith(API_KEY_PREFIX):
            return self._api_key(credential)
        return self._token(credential)

    def _active_user(self, username: str) -> User:
        user: User | None = self._user_cache.get(username, lambda: self.users.get(username))
        if user is None or user.disabled:
            raise AuthError("the user of this credential does not exist or is disabled")
        return user

    def _token(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed bearer token") from exc
        if header.get("alg") != _ALGORITHM:
            if self._oidc is None:
                raise AuthError("bearer token not issued by this archive")
            return self._oidc.principal(token)
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[_ALGORITHM], issuer=_ISSUER, options={"require": ["exp", "sub", "iat"]}
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("bearer token expired; ask POST /api/token for a new one") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid bearer token: {exc}") from exc
        user = self._active_user(str(claims["sub"]))
        # A new password ends the sessions of the old one (a token carries whole seconds).
        changed = user.password_changed_at
        if changed is not None and int(claims["iat"]) < int(changed.timestamp()):
            raise AuthError("bearer token issued before the last password change; sign in again")
        # The role is the user's current one, not the one the token was issued with.
        return Principal(user.username, user.role, "token")

    def _api_key(self, credential: str) -> Principal:
        parts = _split_api_key(credential)
        if parts is None:
            raise AuthError("malformed API key")
        key_id, secret = parts
        key = self._key_cache.get("key:" + key_id, lambda: self.users.get_key(key_id))
        if key is None or not hmac.compare_digest(key.secret_sha256, _sha256(secret)):
            raise AuthError("invalid API key")
        if key.revoked_at is not None:
            raise AuthError("API key revoked")
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            raise AuthError("API key expired")
        user = self._active_user(key.username)
        now = time.monotonic()
        if now - self._key_used.get(key_id, -1e9) > 60:
            self._key_used[key_id] = now
            try:
                self.users.key_used(key_id)
            except Exception:  # noqa: BLE001 - bookkeeping must not fail the request
                log.debug("could not record the use of API key %s", key_id, exc_info=True)
        return Principal(user.username, user.role, "api_key", key_id=key_id)

    def forget(self) -> None:
        """Drop cached users and keys (after a change made in this process)."""
        self._user_cache.clear()
        self._key_cache.clear()


def _credential(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


# --- OIDC ----------------------------------------------------------------------------------
def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class OidcVerifier:
    """Checks tokens of an external OpenID Connect issuer against its published keys."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.audience = settings.oidc_audience
        self.role_claim = settings.oidc_role_claim
        self.username_claim = settings.oidc_username_claim
        self._jwks_url = settings.oidc_jwks_url
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _jwks(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is None:
                url = self._jwks_url
                if url is None:
                    with urllib.request.urlopen(f"{self.issuer}/.well-known/openid-configuration", timeout=10) as r:
                        document = json.load(r)
                    if str(document.get("issuer", "")).rstrip("/") != self.issuer:
                        raise ValueError(f"the discovery document names another issuer: {document.get('issuer')!r}")
                    url = str(document["jwks_uri"])
                self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)
            return self._client

    def principal(self, token: str) -> Principal:
        try:
            key = self._jwks().get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("OIDC token expired") from exc
        except (jwt.PyJWTError, OSError, KeyError, ValueError) as exc:
            raise AuthError(f"invalid OIDC token: {exc}") from exc
        roles = _claim(claims, self.role_claim)
        if isinstance(roles, str):
            roles = [roles]
        role = next((r for r in roles or [] if r in PERMISSIONS), None)
        if role is None:
            raise Forbidden(f"the OIDC token carries no filmless role in its {self.role_claim!r} claim")
        username = _claim(claims, self.username_claim) or claims.get("sub")
        return Principal(str(username), role, "oidc")


def ensure_initial_admin(users: Users, settings: Settings) -> bool:
    """Create the user ``admin`` from ``initial_admin_password`` when no user exists yet (an
    empty value counts as unset)."""
    password = settings.initial_admin_password.get_secret_value() if settings.initial_admin_password else ""
    if not password or users.count() > 0:
        return False
    try:
        password_hash = hash_password(password)
    except UserError as exc:
        raise SystemExit(f"initial_admin_password: {exc}") from None
    try:
        users.add("admin", "admin", password_hash)
    except UserError as exc:
        if "exists" in str(exc):
            return False  # another process made it first
        raise
    log.info("created the user admin from initial_admin_password")
    return True


def check_remote_access(users: Users, settings: Settings) -> None:
    """Refuse to open patient data to the network when nobody could sign in to it."""
    if settings.remote_http and users.count(enabled_only=True) == 0 and not settings.oidc_issuer:
        raise SystemExit(
            f"refusing to serve the HTTP API on {settings.http_host}: no user exists. Create one with "
            "`filmless user add NAME --role admin --password ...` (or set initial_admin_password), "
            "or listen on 127.0.0.1 only."
        )


__all__ = [
    "PERMISSIONS",
    "AuthError",
    "Forbidden",
    "OidcVerifier",
    "Principal",
    "Security",
    "check_remote_access",
    "ensure_initial_admin",
    "hash_password",
    "new_api_key",
    "signing_key",
    "verify_password",
]
