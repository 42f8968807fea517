"""The example ``.env`` of docker-compose.yml, written from the settings' own descriptions.

``python -m filmless.envdoc > .env.example`` (``make env-example``) writes it, and a test checks
that the checked-in ``.env.example`` is exactly what this prints: a setting added to
:class:`filmless.settings.Settings` cannot be missing from it, nor a description be stale.

The file has two parts:

1. the deployment's own variables, which docker-compose.yml reads for the PostgreSQL and
   MinIO services (their secrets);
2. every filmless setting as its ``FILMLESS_...`` variable, in the order of
   :mod:`filmless.settings`, with its description: commented out with its default, except the
   ones the deployment needs (the index on PostgreSQL, the objects in MinIO, production), which
   are set; the two that docker-compose.yml sets itself for each service are named only.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from enum import Enum
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from filmless.settings import Settings

WIDTH = 100
"""Comment lines are wrapped at this many columns."""

HEADER = """\
.env for docker-compose.yml: copy it to .env (chmod 600: it holds every secret of the
deployment), fill in the four empty secrets, then `docker-compose up -d`.

docker-compose.yml reads this file twice: for the settings of the PostgreSQL and MinIO services
(the ${...} in it), and as the environment of every filmless service (env_file), so the DICOM
node (filmless-dicom) and the HTTP API (filmless-api) run on one set of settings. The
docker-compose.yml wiring expects the values set below; every other setting is commented out
with its default.

Generated from filmless's settings by `python -m filmless.envdoc > .env.example` (`make
env-example`): edit the settings' descriptions, not this file; a test compares the two."""

DEPLOYMENT: tuple[tuple[str, str, str], ...] = (
    (
        "POSTGRES_PASSWORD",
        "",
        "Required. Password of the PostgreSQL user filmless, which the postgres service creates "
        "with the database filmless on its first start (changing it later needs ALTER ROLE). "
        "filmless gets it as PGPASSWORD, so FILMLESS_INDEX carries no password. E.g. the output "
        "of `openssl rand -hex 24`.",
    ),
    (
        "MINIO_ROOT_USER",
        "filmless-admin",
        "MinIO's administrator; only the minio-init service uses it, to create the bucket of "
        "FILMLESS_STORAGE and the MinIO user FILMLESS_S3_ACCESS_KEY.",
    ),
    (
        "MINIO_ROOT_PASSWORD",
        "",
        "Required. Password of MINIO_ROOT_USER (at least 8 characters; `openssl rand -hex 24`).",
    ),
)
"""The deployment's own variables: (name, value, description)."""

COMPOSE_VALUES: dict[str, tuple[str, str]] = {
    "FILMLESS_ENVIRONMENT": ("production", "Modalities must be registered: filmless ae add (see docker-compose.yml)."),
    "FILMLESS_INDEX": (
        "postgresql+psycopg://filmless@postgres:5432/filmless",
        "docker-compose.yml: the postgres service; the password is POSTGRES_PASSWORD.",
    ),
    "FILMLESS_STORAGE": (
        "s3://filmless/archive",
        "docker-compose.yml: the minio service; minio-init creates the bucket (here: filmless).",
    ),
    "FILMLESS_S3_ENDPOINT": ("http://minio:9000", "docker-compose.yml: the minio service, inside the compose network."),
    "FILMLESS_S3_ACCESS_KEY": ("filmless", "docker-compose.yml: minio-init creates this MinIO user (readwrite)."),
    "FILMLESS_S3_SECRET_KEY": (
        "",
        "Required: the password minio-init gives that user (at least 8 characters; `openssl rand -hex 24`).",
    ),
    "FILMLESS_S3_REGION": ("us-east-1", "docker-compose.yml: MinIO's region."),
    "FILMLESS_INITIAL_ADMIN_PASSWORD": (
        "",
        "Required: filmless-api listens on the network, which needs a user; on its first start it "
        "creates admin with this password (at least 8 characters; `openssl rand -base64 18`).",
    ),
    "FILMLESS_ACCEPT_UNKNOWN_AES": ("false", "Must be false in production (FILMLESS_ENVIRONMENT)."),
}
"""Settings the deployment sets in .env: name -> (value, what docker-compose.yml makes of it)."""

COMPOSE_FIXED: dict[str, str] = {
    "FILMLESS_COMPONENTS": "set by docker-compose.yml for each service (dicom, api)",
    "FILMLESS_DATA": "set by docker-compose.yml: /data, the volume filmless-data",
    "FILMLESS_HTTP_HOST": "set by docker-compose.yml: 0.0.0.0, so that the published port answers",
}
"""Settings docker-compose.yml sets itself for each filmless service (``environment:``)."""


def env_value(value: Any) -> str:
    """A default as the value of an environment variable that pydantic-settings reads back."""
    if value is None or isinstance(value, SecretStr):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _comment(text: str) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        wrapped = textwrap.wrap(
            paragraph, width=WIDTH - 2, break_long_words=False, break_on_hyphens=False
        )
        lines += [f"# {line}" for line in wrapped] or ["#"]
    return lines


def settings_variables() -> Iterator[tuple[str, FieldInfo, str | None]]:
    """Every setting as (environment variable, field, section description or None), nested
    sections flattened (``FILMLESS_COMPRESSION__CODEC``), in the order of the settings."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    delimiter = str(Settings.model_config.get("env_nested_delimiter", "__"))
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section = (annotation.__doc__ or "").strip() or None
            for sub, subfield in annotation.model_fields.items():
                yield f"{prefix}{name}{delimiter}{sub}".upper(), subfield, section
        else:
            yield f"{prefix}{name}".upper(), field, None


def render() -> str:
    """The text of ``.env.example``."""
    lines = _comment(HEADER)
    lines += ["", "", "# ---- the deployment: PostgreSQL and MinIO (docker-compose.yml)", ""]
    for name, value, description in DEPLOYMENT:
        lines += [*_comment(description), f"{name}={value}", ""]
    lines += ["", "# ---- filmless settings (filmless serve --help names the option of each)", ""]
    known = set()
    last_section: str | None = None
    for variable, field, section in settings_variables():
        known.add(variable)
        if section is not None and section != last_section:
            lines += [*_comment(f"[{variable.split('__')[0].removeprefix('FILMLESS_').lower()}] {section}"), ""]
        last_section = section
        default = env_value(field.get_default(call_default_factory=True))
        shown = default or "unset"
        description = (field.description or "").strip()
        if variable in COMPOSE_FIXED:
            lines += [*_comment(f"{description} [{COMPOSE_FIXED[variable]}]"), ""]
        elif variable in COMPOSE_VALUES:
            value, note = COMPOSE_VALUES[variable]
            lines += [*_comment(f"{description} [default: {shown}]"), *_comment(note), f"{variable}={value}", ""]
        else:
            lines += [*_comment(f"{description} [default: {shown}]"), f"#{variable}={default}", ""]
    unknown = (set(COMPOSE_VALUES) | set(COMPOSE_FIXED)) - known
    if unknown:
        raise RuntimeError(f"envdoc names settings that do not exist: {', '.join(sorted(unknown))}")
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
