"""Tokens of an external OpenID Connect issuer (a hospital's Keycloak): an issuer of our own on
127.0.0.1 publishes its discovery document and JWKS; its RS256 tokens are checked against them,
and the filmless role comes from a claim (a dotted path such as realm_access.roles)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.web.conftest import WebArchive

AUDIENCE = "filmless"
REALM = "/realms/hospital"  # Keycloak's issuer URLs name the realm


class Issuer:
    """An OIDC issuer: /.well-known/openid-configuration and /jwks over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:8]
        self.jwks_requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.removeprefix(REALM)
                if path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.url,
                        "jwks_uri": f"{issuer.url}/jwks",
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
                elif path == "/jwks":
                    issuer.jwks_requests += 1
                    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()))
                    body = {"keys": [{**public, "kid": issuer.kid, "use": "sig", "alg": "RS256"}]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{REALM}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def token(
        self,
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        lifetime: int = 300,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": uuid.uuid4().hex,
            "preferred_username": "bs.hoa",
            "iat": now,
            "exp": now + lifetime,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


@pytest.fixture
def oidc_web(make_web: Callable[..., WebArchive], issuer: Issuer) -> WebArchive:
    return make_web(oidc_issuer=issuer.url, oidc_audience=AUDIENCE, oidc_role_claim="realm_access.roles")


def _me(web: WebArchive, token: str) -> Any:
    return web.anonymous.get("/api/me", headers={"Authorization": f"Bearer {token}"})


def test_a_token_of_the_issuer_names_user_and_role(oidc_web: WebArchive, issuer: Issuer) -> None:
    token = issuer.token(realm_access={"roles": ["offline_access", "radiologist", "clinician"]})
    reply = _me(oidc_web, token)
    assert reply.status_code == 200, reply.text
    assert reply.json()["username"] == "bs.hoa"
    assert reply.json()["role"] == "radiologist"  # the first filmless role in the claim
    assert reply.json()["via"] == "oidc"
    # Administration through an OIDC admin role.
    admin = issuer.token(preferred_username="quantri", realm_access={"roles": ["admin"]})
    listed = oidc_web.anonymous.get("/api/users", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200
    # Local sign-in keeps working next to it.
    assert oidc_web.client("clinician").get("/api/me").json()["via"] == "token"


@pytest.mark.parametrize(
    "case",
    ["wrong audience", "wrong issuer", "expired", "unknown kid", "other key", "no expiry", "garbage"],
)
def test_bad_oidc_tokens_are_401(oidc_web: WebArchive, issuer: Issuer, case: str) -> None:
    roles: dict[str, Any] = {"realm_access": {"roles": ["admin"]}}
    token = {
        "wrong audience": lambda: issuer.token(aud="another-app", **roles),
        "wrong issuer": lambda: issuer.token(iss="http://127.0.0.1:1/realms/other", **roles),
        "expired": lambda: issuer.token(lifetime=-60, **roles),
        "unknown kid": lambda: issuer.token(kid="nosuchkey", **roles),
        "other key": lambda: issuer.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048), **roles),
        "no expiry": lambda: issuer.token(exp=None, **roles),
        "garbage": lambda: issuer.token(**roles)[:-10] + "AAAAAAAAAA",
    }[case]()
    reply = _me(oidc_web, token)
    assert reply.status_code == 401, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.headers["www-authenticate"].startswith("Bearer")


def test_a_valid_token_without_a_filmless_role_is_403(oidc_web: WebArchive, issuer: Issuer) -> None:
    no_role: list[dict[str, Any]] = [{"realm_access": {"roles": ["offline_access"]}}, {"realm_access": {}}, {}]
    for claims in no_role:
        reply = _me(oidc_web, issuer.token(**claims))
        assert reply.status_code == 403, (claims, reply.text)
        assert "role" in reply.json()["detail"]


def test_a_plain_role_claim_and_the_jwks_is_fetched_rarely(make_web: Callable[..., WebArchive], issuer: Issuer) -> None:
    web = make_web(oidc_issuer=issuer.url, oidc_audience=AUDIENCE)  # role claim: "roles"
    for _ in range(3):
        reply = _me(web, issuer.token(roles="clinician"))
        assert reply.status_code == 200 and reply.json()["role"] == "clinician"
    assert issuer.jwks_requests == 1
    # Tokens naming unknown keys do not make us ask the issuer again and again.
    for _ in range(5):
        assert _me(web, issuer.token(kid=uuid.uuid4().hex, roles="clinician")).status_code == 401
    assert issuer.jwks_requests <= 2
