"""NUL characters (which PostgreSQL refuses in text) get a 4xx, never a 5xx, and nothing is
written: found by schemathesis on the PostgreSQL index."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import WebArchive


@pytest.mark.parametrize(
    "body",
    [
        {"username": "a\x00b", "role": "admin"},
        {"username": "\x00", "role": "admin"},
        {"username": "ab", "role": "admin", "full_name": "x\x00"},
    ],
)
def test_user_names_with_nul(web: WebArchive, body: dict[str, Any]) -> None:
    reply = web.client().post("/api/users", json=body)
    assert 400 <= reply.status_code < 500, reply.text
    assert web.client().get("/api/users/ab").status_code == 404


def test_sign_in_and_urls_with_nul(web: WebArchive) -> None:
    assert web.anonymous.post("/api/token", data={"username": "admin1\x00", "password": "x" * 10}).status_code == 401
    assert web.client().get("/api/audit?actor=a%00b").status_code == 400
    assert web.client().get("/dicom-web/studies?PatientName=a%00b").status_code == 400
    assert web.client().get(f"/api/audit?before={2**40}").status_code == 400
