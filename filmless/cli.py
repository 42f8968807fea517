"""The `filmless` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from filmless import __version__
from filmless.settings import Settings, load_settings
from storage.errors import IndexUnavailable

# Options every subcommand takes (the archive's location).
_COMMON = (
    "data", "index", "storage", "log_level",
    "s3_endpoint", "s3_access_key", "s3_region", "s3_secure", "s3_path_style",
    "s3_sse", "s3_sse_kms_key_id", "s3_part_size", "spool",
)
# Secrets: environment or settings file only, since a command line is visible to every user (ps).
_NOT_ON_COMMAND_LINE = ("s3_secret_key", "storage_encryption_keys", "jwt_secret", "initial_admin_password")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_setting(parser: argparse.ArgumentParser, name: str, field: Any, env: str) -> None:
    annotation = field.annotation
    help_text = f"{field.description or ''} [env {env}]"
    dest = name
    if annotation is bool:
        parser.add_argument(
            _option(name), dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
        return
    choices = None
    literal = get_args(annotation)
    if literal and all(isinstance(a, str) for a in literal):
        choices = list(literal)
    elif isinstance(annotation, type) and issubclass(annotation, str) and hasattr(annotation, "__members__"):
        choices = [m.value for m in annotation]  # type: ignore[attr-defined]
    default = field.default if not isinstance(field.default, BaseModel) else None
    parser.add_argument(
        _option(name),
        dest=dest,
        default=None,
        choices=choices,
        metavar=name.upper() if not choices else None,
        help=f"{help_text} (default: {default})",
    )


def _add_settings(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add one option per setting (all of them, or ``names``), nested sections flattened."""
    for name, field in Settings.model_fields.items():
        if (names is not None and name not in names) or name in _NOT_ON_COMMAND_LINE:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, subfield in annotation.model_fields.items():
                if sub.startswith("by_"):
                    continue  # mappings: environment or settings file only
                _add_setting(parser, f"{name}_{sub}", subfield, f"FILMLESS_{name.upper()}__{sub.upper()}")
        else:
            _add_setting(parser, name, field, f"FILMLESS_{name.upper()}")
    parser.add_argument("--config", type=Path, default=None, help="Settings file (TOML) [env FILMLESS_CONFIG]")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub in annotation.model_fields:
                value = getattr(args, f"{name}_{sub}", None)
                if value is not None:
                    nested.setdefault(name, {})[sub] = value
        else:
            value = getattr(args, name, None)
            if value is not None:
                overrides[name] = value
    if nested:
        # Merge with what the environment / file say for the other keys of the section.
        base = load_settings(config_file=args.config)
        for section, values in nested.items():
            merged = getattr(base, section).model_dump()
            merged.update(values)
            overrides[section] = merged
    return load_settings(overrides, config_file=args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="filmless", description="filmless PACS/RIS")
    parser.add_argument("--version", action="version", version=f"filmless {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="Run the DICOM node, the HTTP API and compression workers")
    _add_settings(p)

    p = sub.add_parser("import", help="Import DICOM files, folders, DICOMDIR trees and .zip archives")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--no-wait", action="store_true", help="Do not wait for background compression to finish")
    _add_settings(p, _COMMON + ("compression", "max_object_size"))

    p = sub.add_parser("verify", help="Re-read every stored object and check it against the index")
    p.add_argument(
        "--repair",
        action="store_true",
        help="Remove what a crash left behind: objects no index row references and partial "
        "(temporary) files, if older than --min-age; never an object an index row references",
    )
    p.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="With --repair: leave younger orphans and temporary files alone, since a store may "
        "still be under way (default: 3600; 0 only while nothing is being stored)",
    )
    _add_settings(p, _COMMON)

    p = sub.add_parser("stats", help="Counts and bytes received vs stored, per modality")
    p.add_argument("--json", action="store_true", help="Print a JSON object")
    _add_settings(p, _COMMON)

    p = sub.add_parser(
        "migrate",
        help="Create or upgrade the index schema (alembic migrations); serve does it too on start-up",
    )
    p.add_argument("--check", action="store_true", help="Only say where the index stands; exit 1 unless up to date")
    _add_settings(p, ("data", "index", "log_level"))

    p = sub.add_parser(
        "echo",
        help="C-ECHO the DICOM node of these settings (dicom_host, dicom_port, ae_title); exit "
        "status 0 only if it answers Success (a container healthcheck)",
    )
    p.add_argument(
        "--calling-ae",
        default="FILMLESS-ECHO",
        help="Our AE title; when accept_unknown_aes is off it must be registered (filmless ae add "
        "... --services echo) (default: FILMLESS-ECHO)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="Seconds for each step (default: 10)")
    _add_settings(p, ("dicom_host", "dicom_port", "ae_title", "log_level"))

    p = sub.add_parser("compress", help="Run a compression worker (until stopped, or --once)")
    p.add_argument("--once", action="store_true", help="Drain the queue and exit")
    _add_settings(p, _COMMON)

    ae = sub.add_parser("ae", help="The AE registry: the DICOM peers filmless knows")
    ae_sub = ae.add_subparsers(dest="ae_command", required=True, metavar="ACTION")
    p = ae_sub.add_parser("add", help="Register (or update) an AE")
    p.add_argument("ae_title", metavar="AET")
    p.add_argument("host", metavar="HOST")
    p.add_argument("port", metavar="PORT", type=int)
    p.add_argument("--description", default="", help="Free text, e.g. the room and the console")
    p.add_argument(
        "--services",
        default="echo,store,find,move,get",
        help="What the AE may ask of filmless, comma-separated: echo, store, find, move, get "
        "(default: all). A modality that only sends: echo,store",
    )
    p.add_argument(
        "--ascii-only",
        action="store_true",
        help="C-FIND answers in plain ASCII without diacritics (for consoles that cannot show UTF-8)",
    )
    _add_settings(p, _COMMON)
    p = ae_sub.add_parser("list", help="List registered AEs")
    p.add_argument("--json", action="store_true", help="Print JSON")
    _add_settings(p, _COMMON)
    p = ae_sub.add_parser("remove", help="Remove an AE")
    p.add_argument("ae_title", metavar="AET")
    _add_settings(p, _COMMON)

    for module in _command_modules():
        module.add_parsers(sub, _add_settings, _COMMON)
    return parser


def _command_modules() -> list[Any]:
    """Modules that add subcommands of their own: ``add_parsers(sub, add_settings, common)``
    and ``HANDLERS`` (command name to handler)."""
    from filmless import backup, trash_commands, web_commands

    return [backup, web_commands, trash_commands]  # export/restore/replication; user/apikey/audit; trash/purge


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"filmless: invalid settings: {exc}", file=sys.stderr)
        return 2
    from filmless import commands

    handlers = {
        "serve": commands.serve,
        "import": commands.import_,
        "verify": commands.verify,
        "stats": commands.stats,
        "compress": commands.compress,
        "echo": commands.echo,
        "migrate": commands.migrate,
        "ae": commands.ae,
    }
    for module in _command_modules():
        handlers.update(module.HANDLERS)
    handler = handlers[args.command]
    try:
        return handler(settings, args)
    except KeyboardInterrupt:
        return 130
    except IndexUnavailable as exc:  # e.g. an index made by a newer filmless, or unreachable
        print(f"filmless: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
