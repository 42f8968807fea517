"""Project-level checks: type checking and the fixed command-line spellings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _filmless(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filmless.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_serve_help_documents_the_fixed_spellings() -> None:
    out = _filmless("serve", "--help").stdout
    for option in ("--data", "--dicom-port", "--http-port", "--ae-title", "--compression-codec"):
        assert option in out
    # Every option names its environment variable.
    assert "FILMLESS_DICOM_PORT" in out and "FILMLESS_COMPRESSION__CODEC" in out


def test_settings_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    from filmless.settings import load_settings

    config = tmp_path / "filmless.toml"
    config.write_text('ae_title = "FROMFILE"\ndicom_port = 1111\nhttp_port = 2222\n[compression]\ncodec = "jpeg2000"\n')
    old = dict(os.environ)
    try:
        os.environ["FILMLESS_DICOM_PORT"] = "3333"
        settings = load_settings({"http_port": 4444}, config_file=config)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert settings.ae_title == "FROMFILE"
    assert settings.dicom_port == 3333
    assert settings.http_port == 4444
    assert settings.compression.codec == "jpeg2000"


def test_production_refuses_unknown_aes() -> None:
    result = _filmless("stats", "--data", "/nonexistent-filmless", env={"FILMLESS_ENVIRONMENT": "production"})
    assert result.returncode == 2
    assert "accept_unknown_aes" in result.stderr


def test_invalid_setting_is_a_clear_error(tmp_path: Path) -> None:
    result = _filmless("stats", "--data", str(tmp_path), env={"FILMLESS_DICOM_PORT": "not-a-port"})
    assert result.returncode == 2
    assert "dicom_port" in result.stderr
