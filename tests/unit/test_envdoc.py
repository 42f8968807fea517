""".env.example is generated from the settings (filmless/envdoc.py) and must stay so; the
`components` setting that splits `filmless serve` into the two services of docker-compose.yml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from filmless import envdoc
from filmless.cli import build_parser, _settings
from filmless.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
_LINE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def _assignments(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(set variables, commented-out variables) of an env file."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            (commented if match.group(1) else active)[match.group(2)] = match.group(3)
    return active, commented


def _comment_text(text: str) -> str:
    """The comments of an env file as one line (they are wrapped)."""
    return " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("FILMLESS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_env_example_is_up_to_date() -> None:
    assert ENV_EXAMPLE.read_text() == envdoc.render(), (
        ".env.example is stale: regenerate it with `make env-example` "
        "(python -m filmless.envdoc > .env.example)"
    )


def test_every_setting_is_documented_once() -> None:
    text = ENV_EXAMPLE.read_text()
    active, commented = _assignments(text)
    for variable, field, _section in envdoc.settings_variables():
        assert field.description, f"{variable} has no description"
        if variable in envdoc.COMPOSE_FIXED:
            assert variable not in active and variable not in commented
            assert envdoc.COMPOSE_FIXED[variable] in _comment_text(text)
        else:
            assert (variable in active) != (variable in commented), variable
    # The secrets the deployment needs are there, and empty: docker-compose.yml refuses to start
    # until they are filled in.
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "FILMLESS_S3_SECRET_KEY"):
        assert active[secret] == ""
    assert not any(line.rstrip() != line for line in text.splitlines()), "trailing blanks"
    assert max(len(line) for line in text.splitlines()) <= envdoc.WIDTH + 30


def test_commented_defaults_read_back_as_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    """Uncommenting a default line changes nothing: the values are written as pydantic reads them."""
    defaults = Settings().model_dump()
    _active, commented = _assignments(ENV_EXAMPLE.read_text())
    uncommented = {name: value for name, value in commented.items() if value}  # empty: unset
    assert len(uncommented) > 20
    for name, value in uncommented.items():
        clean_env.setenv(name, value)
    assert Settings().model_dump() == defaults


def test_the_deployment_values_make_valid_production_settings(clean_env: pytest.MonkeyPatch) -> None:
    active, _commented = _assignments(ENV_EXAMPLE.read_text())
    for name, value in active.items():
        if name.startswith("FILMLESS_"):
            clean_env.setenv(name, value or "filled-in-secret")
    settings = load_settings()
    assert settings.environment == "production" and not settings.accept_unknown_aes
    assert settings.index_url == "postgresql+psycopg://filmless@postgres:5432/filmless"  # no password
    assert settings.storage_url.startswith("s3://")
    assert settings.s3_secret_key is not None and settings.s3_secret_key.get_secret_value() == "filled-in-secret"


def test_components_setting(clean_env: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert _settings(parser.parse_args(["serve"])).components == "all"
    assert _settings(parser.parse_args(["serve", "--components", "dicom"])).components == "dicom"
    clean_env.setenv("FILMLESS_COMPONENTS", "api")
    assert _settings(parser.parse_args(["serve"])).components == "api"
    assert _settings(parser.parse_args(["serve", "--components", "all"])).components == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--components", "workers"])
    clean_env.setenv("FILMLESS_COMPONENTS", "workers")
    with pytest.raises(ValidationError):
        load_settings()
