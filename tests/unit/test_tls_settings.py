"""The DICOM TLS settings: what start-up refuses before anything listens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from filmless.settings import Settings


@pytest.fixture(autouse=True)
def _no_filmless_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FILMLESS_"):
            monkeypatch.delenv(key)


def test_off_by_default() -> None:
    settings = Settings()
    assert settings.dicom_tls_port == 0
    assert settings.tls_require_client_certificate is True


def test_port_without_certificate_and_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="dicom_tls_port needs tls_certificate and tls_private_key"):
        Settings(dicom_tls_port=2762)
    with pytest.raises(ValidationError, match="dicom_tls_port needs tls_certificate and tls_private_key"):
        Settings(dicom_tls_port=2762, tls_certificate=Path("server.crt"))


def test_required_client_certificates_need_a_ca_file() -> None:
    with pytest.raises(ValidationError, match="tls_require_client_certificate needs tls_ca_certificates"):
        Settings(dicom_tls_port=2762, tls_certificate=Path("s.crt"), tls_private_key=Path("s.key"))


def test_server_authentication_only_needs_no_ca_file() -> None:
    settings = Settings(
        dicom_tls_port=2762,
        tls_certificate=Path("s.crt"),
        tls_private_key=Path("s.key"),
        tls_require_client_certificate=False,
    )
    assert settings.tls_ca_certificates is None


def test_tls_port_must_differ_from_the_plain_port() -> None:
    with pytest.raises(ValidationError, match="must differ from dicom_port"):
        Settings(
            dicom_port=2762,
            dicom_tls_port=2762,
            tls_certificate=Path("s.crt"),
            tls_private_key=Path("s.key"),
            tls_ca_certificates=Path("ca.crt"),
        )


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILMLESS_DICOM_TLS_PORT", "2762")
    monkeypatch.setenv("FILMLESS_TLS_CERTIFICATE", "s.crt")
    monkeypatch.setenv("FILMLESS_TLS_PRIVATE_KEY", "s.key")
    monkeypatch.setenv("FILMLESS_TLS_REQUIRE_CLIENT_CERTIFICATE", "false")
    settings = Settings()
    assert settings.dicom_tls_port == 2762
    assert settings.tls_certificate == Path("s.crt")
    assert settings.tls_require_client_certificate is False
