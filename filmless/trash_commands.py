"""`filmless trash` and `filmless purge`: what the API deleted, restored or removed for good.

``filmless trash list`` shows the trash; ``filmless trash restore`` puts instances back through
the ingest path; ``filmless purge`` removes for good what has been in the trash longer than the
retention period (without ``--yes`` it only lists it). Each writes the audit log (actor: the
operating-system user, host ``cli``). See :mod:`storage.trash`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from filmless.bootstrap import Archive, build_archive, configure_logging
from filmless.settings import Settings
from filmless.web_commands import HOST, os_user
from storage.errors import ArchiveError
from storage.index import trash as trash_index
from storage.index.trash import TrashItem
from storage.trash import DEFAULT_RETENTION_DAYS, RestoreOutcome, Trash

err = Console(stderr=True)
out = Console()


def add_parsers(sub: Any, add_settings: Callable[..., None], common: tuple[str, ...]) -> None:
    trash = sub.add_parser("trash", help="Instances deleted through the API: list them, restore them")
    trash_sub = trash.add_subparsers(dest="trash_command", required=True, metavar="ACTION")
    p = trash_sub.add_parser("list", help="List the trash, newest first")
    p.add_argument("--json", action="store_true", help="Print JSON (one array)")
    p.add_argument("--study", metavar="UID", help="Only this study")
    p.add_argument(
        "--state",
        choices=[*trash_index.STATES, "all"],
        default="trashed",
        help="trashed (restorable: the default), restored, purged or all",
    )
    p.add_argument("--limit", type=int, default=1000, help="At most this many items (default: 1000)")
    add_settings(p, common)

    p = trash_sub.add_parser(
        "restore",
        help="Put deleted instances back (ingested again from their trashed objects, sha256-checked); "
        "an instance sent again since it was deleted, with other content, is reported and left alone",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, metavar="N", help="One trash item (the id trash list shows)")
    which.add_argument("--study", metavar="UID", help="Every trashed instance of this study")
    which.add_argument("--series", metavar="UID", help="Every trashed instance of this series")
    which.add_argument("--instance", metavar="UID", help="This SOP Instance UID")
    add_settings(p, common + ("compression", "max_object_size"))

    p = sub.add_parser(
        "purge",
        help="Remove for good the objects of instances in the trash for longer than the retention "
        "period (and their prior versions); without --yes only lists what would go",
    )
    p.add_argument(
        "--older-than",
        type=float,
        default=float(DEFAULT_RETENTION_DAYS),
        metavar="DAYS",
        help=f"Only what was deleted at least this many days ago (default: {DEFAULT_RETENTION_DAYS})",
    )
    p.add_argument("--study", metavar="UID", help="Only this study")
    p.add_argument("--yes", action="store_true", help="Do it (otherwise: only list what would be purged)")
    add_settings(p, common)


def _archive(settings: Settings) -> Archive:
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    return build_archive(settings)


def _table(items: list[TrashItem], title: str) -> Table:
    table = Table(title=title)
    for name in ("id", "deleted", "by", "level", "patient", "study / series / instance", "reason", "state"):
        table.add_column(name, overflow="fold")
    for i in items:
        table.add_row(
            str(i.pk),
            i.trashed_at.strftime("%Y-%m-%d %H:%M"),
            i.actor or "-",
            i.level,
            i.patient_id or "-",
            f"{i.study_instance_uid}\n{i.series_instance_uid}\n{i.sop_instance_uid}",
            i.reason,
            i.state,
        )
    return table


def trash(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        if args.trash_command == "list":
            return _list(archive, args)
        return _restore(archive, args)
    except ArchiveError as exc:
        err.print(f"[red]filmless trash: {exc}[/red]", highlight=False, soft_wrap=True)
        return 1
    finally:
        archive.close()


def _list(archive: Archive, args: argparse.Namespace) -> int:
    state = None if args.state == "all" else args.state
    found = trash_index.items(archive.index, study_uid=args.study, state=state, limit=max(1, args.limit))
    if args.json:
        print(json.dumps([i.as_dict() for i in found], ensure_ascii=False))
        return 0
    if not found:
        out.print(f"the trash holds nothing{'' if state is None else f' {state}'}")
        return 0
    out.print(_table(found, f"trash ({args.state})"))
    return 0


def _restore(archive: Archive, args: argparse.Namespace) -> int:
    if args.id is not None:
        chosen = trash_index.items(archive.index, pk=args.id)
    else:
        chosen = trash_index.items(
            archive.index, study_uid=args.study, series_uid=args.series, sop_instance_uid=args.instance, state="trashed"
        )
    # Newest first: an instance deleted, sent again and deleted again comes back as last seen.
    chosen.sort(key=lambda i: i.pk, reverse=True)
    if not chosen:
        err.print("[red]filmless trash restore: no such item in the trash[/red]")
        return 1
    results = Trash(archive.index, archive.store, archive.ingest).restore(chosen)
    problems = 0
    for r in results:
        ok = r.outcome in (RestoreOutcome.RESTORED, RestoreOutcome.ALREADY_THERE)
        problems += not ok
        colour = "green" if ok else "red"
        note = f": {r.detail}" if r.detail else ""
        out.print(
            f"[{colour}]{r.outcome}[/{colour}] #{r.item.pk} {r.item.sop_instance_uid}{note}", highlight=False, soft_wrap=True
        )
        archive.index.record_audit(
            "trash.restore",
            "success" if ok else "failure",
            actor=os_user(),
            actor_host=HOST,
            study_instance_uid=r.item.study_instance_uid,
            series_instance_uid=r.item.series_instance_uid,
            sop_instance_uid=r.item.sop_instance_uid,
            detail={"trash_id": r.item.pk, "outcome": str(r.outcome), "detail": r.detail},
        )
    deleted = Trash(archive.index, archive.store, archive.ingest).collect_garbage()
    restored = len(results) - problems
    out.print(f"{restored} of {len(results)} restored; {deleted} trashed objects removed (copies ingested again)")
    return 1 if problems else 0


def purge(settings: Settings, args: argparse.Namespace) -> int:
    if args.older_than < 0:
        err.print("[red]filmless purge: --older-than is a number of days, 0 or more[/red]")
        return 2
    archive = _archive(settings)
    try:
        bin_ = Trash(archive.index, archive.store, archive.ingest)
        due = bin_.due(timedelta(days=args.older_than), study_uid=args.study)
        scope = f"deleted more than {args.older_than:g} days ago" + (f", study {args.study}" if args.study else "")
        if not due:
            out.print(f"nothing to purge ({scope})")
            return 0
        size = sum(i.stored_size for i in due)
        if not args.yes:
            out.print(_table(due, f"would purge ({scope})"))
            out.print(
                f"{len(due)} instances, {size:,} bytes would be removed for good; run again with --yes to do it",
                highlight=False,
            )
            return 0
        report = bin_.purge(due)
        archive.index.record_audit(
            "trash.purge",
            "success",
            actor=os_user(),
            actor_host=HOST,
            study_instance_uid=args.study,
            detail={
                "older_than_days": args.older_than,
                "purged": len(report.purged),
                "bytes": report.bytes,
                "prior_versions": report.prior_versions,
                "trash_ids": [i.pk for i in report.purged[:1000]],
                "sop_instance_uids": [i.sop_instance_uid for i in report.purged[:1000]],
            },
        )
    except ArchiveError as exc:
        err.print(f"[red]filmless purge: {exc}[/red]", highlight=False, soft_wrap=True)
        return 1
    finally:
        archive.close()
    out.print(
        f"purged {len(report.purged)} instances ({report.bytes:,} bytes) and {report.prior_versions} prior versions; "
        f"{report.objects_deleted} objects deleted",
        highlight=False,
    )
    return 0


HANDLERS: dict[str, Callable[[Any, argparse.Namespace], int]] = {"trash": trash, "purge": purge}
