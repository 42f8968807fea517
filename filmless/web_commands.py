"""`filmless user`, `filmless apikey` and `filmless audit`: the people and systems of the HTTP API, and the audit log.

Each change is written to the audit log (``admin.user``, ``admin.api_key``; exporting the log:
``audit.export``) with the operating-system user as the actor and ``cli`` as the host.
Passwords are never taken from the environment or logged; ``--password`` is visible to other
users of the machine (ps), so ``--password-stdin`` or the prompt is the better way.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from filmless.settings import Settings
from storage.index import Index, create_index_engine
from storage.index import audit_log
from storage.index.users import ROLES, UnknownUser, UserError, Users

err = Console(stderr=True)
out = Console()

HOST = "cli"
"""The actor_host of the audit events the command line writes."""


class CommandError(Exception):
    """A command that cannot be done: its message is printed, the exit status is ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_parsers(sub: Any, add_settings: Callable[..., None], common: tuple[str, ...]) -> None:
    user = sub.add_parser("user", help="Users of the HTTP API (people; systems such as the EMR use API keys)")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    p = user_sub.add_parser("add", help="Create a user")
    p.add_argument("username", metavar="NAME")
    p.add_argument("--role", required=True, choices=ROLES, help="What the user may do (see the README)")
    _password_options(p, allow_none=True)
    p.add_argument("--full-name", default="", help="The person's name as shown (e.g. 'BS. Nguyễn Thị Lan')")
    add_settings(p, common)

    p = user_sub.add_parser("list", help="List the users")
    p.add_argument("--json", action="store_true", help="Print JSON")
    add_settings(p, common)

    for action, text in (
        ("disable", "Disable a user: sign-ins, tokens and API keys stop working (within seconds)"),
        ("enable", "Enable a disabled user again"),
    ):
        p = user_sub.add_parser(action, help=text)
        p.add_argument("username", metavar="NAME")
        add_settings(p, common)

    p = user_sub.add_parser("passwd", help="Set a user's password (also unlocks the account; its sessions end)")
    p.add_argument("username", metavar="NAME")
    _password_options(p, allow_none=False)
    add_settings(p, common)

    p = user_sub.add_parser("role", help="Change a user's role")
    p.add_argument("username", metavar="NAME")
    p.add_argument("role", metavar="ROLE", choices=ROLES, help=f"One of {', '.join(ROLES)}")
    add_settings(p, common)

    apikey = sub.add_parser("apikey", help="API keys: long-lived credentials of systems (the EMR), each for a user")
    key_sub = apikey.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    p = key_sub.add_parser("add", help="Make an API key for USER and print it (this once: only its hash is kept)")
    p.add_argument("username", metavar="USER")
    p.add_argument("--description", default="", help="What uses it, e.g. 'EMR of the hospital'")
    p.add_argument("--expires-days", type=int, default=None, metavar="N", help="Stop working after N days (default: never)")
    add_settings(p, common)
    p = key_sub.add_parser("list", help="List the API keys (never the keys themselves)")
    p.add_argument("--user", default=None, metavar="USER", help="Only this user's keys")
    p.add_argument("--json", action="store_true", help="Print JSON")
    add_settings(p, common)
    p = key_sub.add_parser("revoke", help="Revoke an API key (by its id, the part after flk_)")
    p.add_argument("key_id", metavar="KEY_ID")
    add_settings(p, common)

    audit = sub.add_parser("audit", help="The audit log (who read or changed which patient data, from where, when)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = audit_sub.add_parser("export", help="Write the audit log (or the events matching the filters), oldest first")
    p.add_argument("--since", metavar="ISO", help="From this date or date-time on (ISO 8601; UTC unless it says)")
    p.add_argument("--until", metavar="ISO", help="Before this date or date-time")
    p.add_argument("--action", metavar="A", help="Only this action (a prefix when it ends in *, e.g. 'admin.*')")
    p.add_argument("--actor", metavar="U", help="Only this actor (user name or AE title)")
    p.add_argument("--outcome", metavar="O", help="Only this outcome (success, failure, denied)")
    p.add_argument("--study", metavar="UID", help="Only events about this Study Instance UID")
    p.add_argument("--host", metavar="HOST", help="Only events from this client address")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="One JSON object a line, or CSV (default: jsonl)")
    p.add_argument("--output", type=Path, default=None, metavar="FILE", help="Write to FILE (default: standard output)")
    add_settings(p, common)


def _password_options(p: argparse.ArgumentParser, *, allow_none: bool) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password", metavar="PW", help="The password (visible to other users in ps; prefer --password-stdin)")
    group.add_argument("--password-stdin", action="store_true", help="Read the password from the first line of standard input")
    if allow_none:
        group.add_argument(
            "--no-password",
            action="store_true",
            help="No password: the user signs in only with API keys (a system such as the EMR)",
        )


# --- shared ----------------------------------------------------------------------------------
def os_user() -> str:
    """Who runs the command (the actor of its audit events)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user without a name
        return f"uid:{os.getuid()}"


@contextmanager
def _opened_index(settings: Settings) -> Iterator[Index]:
    if settings.index is None:
        settings.data.mkdir(parents=True, exist_ok=True)
    index = Index(create_index_engine(settings.index_url))
    try:
        index.create()  # creates or upgrades the schema; refuses an index of a newer filmless
        yield index
    finally:
        index.dispose()


def _record(index: Index, action: str, outcome: str, detail: dict[str, Any]) -> None:
    index.record_audit(action, outcome, actor=os_user(), actor_host=HOST, detail=detail)


def _password(args: argparse.Namespace, *, required: bool) -> str | None:
    from viewer_api.security import MIN_PASSWORD_LENGTH

    if args.password is not None:
        password: str = args.password
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input", 2)
    elif getattr(args, "no_password", False):
        return None
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise CommandError("the two passwords differ", 2)
    else:
        also = ", or --no-password for a user that signs in with API keys only" if not required else ""
        raise CommandError(f"give --password or --password-stdin (standard input is not a terminal){also}", 2)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CommandError(f"a password has at least {MIN_PASSWORD_LENGTH} characters", 2)
    return password


def _run(settings: Settings, args: argparse.Namespace, action: Callable[[Index, argparse.Namespace], int]) -> int:
    try:
        with _opened_index(settings) as index:
            return action(index, args)
    except (CommandError, UserError) as exc:
        name = f"{args.command} {getattr(args, f'{args.command}_command', '')}".strip()
        err.print(f"[red]filmless {name}: {exc}[/red]", highlight=False, soft_wrap=True)
        return exc.status if isinstance(exc, CommandError) else 1


def _iso(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


# --- filmless user ---------------------------------------------------------------------------
def user(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, args, _user)


def _user(index: Index, args: argparse.Namespace) -> int:
    from viewer_api.security import hash_password

    users = Users(index)
    command: str = args.user_command
    if command == "list":
        listed = users.all()
        if args.json:
            print(json.dumps([{**u.public(), "has_password": u.password_hash is not None} for u in listed]))
            return 0
        table = Table(title="users")
        for column in ("user", "role", "full name", "state", "last sign-in"):
            table.add_column(column)
        now = datetime.now(UTC)
        for u in listed:
            state = "disabled" if u.disabled else "locked" if u.locked_until and u.locked_until > now else "active"
            table.add_row(u.username, u.role, u.full_name, state, _iso(u.public()["last_login_at"]))
        out.print(table)
        if not listed:
            out.print("no user yet: filmless user add NAME --role admin")
        return 0

    name: str = args.username
    detail: dict[str, Any] = {"op": command, "user": name}
    try:
        if command == "add":
            password = _password(args, required=False)
            detail["role"] = args.role
            users.add(name, args.role, hash_password(password) if password else None, full_name=args.full_name)
            message = f"added user {name} ({args.role}{'' if password else ', API keys only'})"
        elif command == "passwd":
            password = _password(args, required=True)
            assert password is not None
            users.set_password(name, hash_password(password))
            message = f"password of {name} set; its sessions end"
        elif command in ("disable", "enable"):
            if command == "disable":
                _keep_an_admin(users, name)
            users.set_disabled(name, command == "disable")
            message = f"{command}d {name}"
        elif command == "role":
            detail["role"] = args.role
            if args.role != "admin":
                _keep_an_admin(users, name)
            users.set_role(name, args.role)
            message = f"{name} is now {args.role}"
        else:  # pragma: no cover - argparse knows the actions
            raise CommandError(f"unknown action {command}", 2)
    except (UserError, CommandError) as exc:
        if not (isinstance(exc, CommandError) and exc.status == 2):
            _record(index, "admin.user", "failure", {**detail, "error": str(exc)})
        raise
    _record(index, "admin.user", "success", detail)
    out.print(message, highlight=False)
    return 0


def _keep_an_admin(users: Users, name: str) -> None:
    if users.enabled_admins() == [name]:
        raise CommandError(f"{name} is the last enabled administrator; add another one first (filmless user add ... --role admin)")


# --- filmless apikey -------------------------------------------------------------------------
def apikey(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, args, _apikey)


def _apikey(index: Index, args: argparse.Namespace) -> int:
    from viewer_api.security import new_api_key

    users = Users(index)
    command: str = args.apikey_command
    if command == "list":
        if args.user is not None:
            users.require(args.user)
        keys = users.list_keys(args.user)
        if args.json:
            print(json.dumps([k.public() for k in keys]))
            return 0
        table = Table(title="API keys")
        for column in ("key id", "user", "description", "expires", "state", "last used"):
            table.add_column(column)
        now = datetime.now(UTC)
        for k in keys:
            state = "revoked" if k.revoked_at else "expired" if k.expires_at and k.expires_at <= now else "active"
            p = k.public()
            table.add_row(k.key_id, k.username, k.description, _iso(p["expires_at"]), state, _iso(p["last_used_at"]))
        out.print(table)
        return 0

    if command == "add":
        detail: dict[str, Any] = {"op": "add", "user": args.username, "expires_days": args.expires_days}
        if args.expires_days is not None and not 1 <= args.expires_days <= 3650:
            raise CommandError("--expires-days is between 1 and 3650", 2)
        key, key_id, secret_sha256 = new_api_key()
        detail["key_id"] = key_id
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_days) if args.expires_days else None
        try:
            users.add_key(args.username, key_id, secret_sha256, description=args.description, expires_at=expires_at)
        except UserError as exc:
            _record(index, "admin.api_key", "failure", {**detail, "error": str(exc)})
            raise
        _record(index, "admin.api_key", "success", detail)
        err.print(
            f"API key {key_id} for {args.username}"
            + (f", valid until {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else "")
            + ". It is shown this once: give it to the system now (header 'Authorization: Bearer <key>' or 'X-API-Key: <key>').",
            highlight=False,
            soft_wrap=True,
        )
        print(key)  # alone on standard output, for scripts
        return 0

    # A whole key (flk_<id>_<secret>) names its id too.
    revoked_id: str = args.key_id.removeprefix("flk_").split("_", 1)[0]
    detail = {"op": "revoke", "key_id": revoked_id}
    try:
        key_record = users.revoke_key(revoked_id)
    except UnknownUser as exc:
        _record(index, "admin.api_key", "failure", {**detail, "error": str(exc)})
        raise
    _record(index, "admin.api_key", "success", {**detail, "user": key_record.username})
    out.print(f"revoked API key {revoked_id} of {key_record.username}", highlight=False)
    return 0


# --- filmless audit --------------------------------------------------------------------------
def audit(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, args, _audit_export)


def _audit_export(index: Index, args: argparse.Namespace) -> int:
    try:
        flt = audit_log.AuditFilter(
            since=audit_log.parse_time(args.since, "--since") if args.since else None,
            until=audit_log.parse_time(args.until, "--until") if args.until else None,
            actor=args.actor,
            action=args.action,
            outcome=args.outcome,
            study=args.study,
            host=args.host,
        )
    except audit_log.AuditFilterError as exc:
        raise CommandError(str(exc), 2) from exc
    events = audit_log.stream(index, flt)
    if args.output is None:
        count = _write_events(events, sys.stdout, args.format)
        sys.stdout.flush()
    else:
        # Written beside the destination and renamed at the end: never a half-written export.
        target: Path = args.output
        partial = target.with_name(f".{target.name}.partial")
        try:
            with open(partial, "w", encoding="utf-8", newline="") as fh:
                count = _write_events(events, fh, args.format)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise CommandError(f"cannot write {target}: {exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        err.print(f"{count} audit events written to {target}", highlight=False, soft_wrap=True)
    _record(index, "audit.export", "success", {"filter": flt.as_dict(), "format": args.format, "events": count})
    return 0


def _write_events(events: Iterator[audit_log.AuditRecord], fh: IO[str], fmt: str) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.writer(fh)
        writer.writerow(audit_log.COLUMNS)
        for event in events:
            row = event.as_dict()
            if row["detail"] is not None:
                row["detail"] = json.dumps(row["detail"], ensure_ascii=False)
            writer.writerow(["" if row[c] is None else row[c] for c in audit_log.COLUMNS])
            count += 1
    else:
        for event in events:
            fh.write(json.dumps(event.as_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


HANDLERS: dict[str, Callable[[Any, argparse.Namespace], int]] = {"user": user, "apikey": apikey, "audit": audit}
