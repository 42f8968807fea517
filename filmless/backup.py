"""`filmless export` and `filmless restore` (see :mod:`storage.export` for the layout)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from filmless import __version__
from filmless.bootstrap import build_archive, configure_logging, open_object_store
from filmless.settings import Settings
from storage import export as exporting
from storage.errors import ArchiveError
from storage.index import Index, create_index_engine
from storage.objects import ObjectStore

err = Console(stderr=True)
out = Console()

# Where an export goes / a restore reads: a folder, or s3://bucket/prefix reached with these
# options (default: the archive's own FILMLESS_S3_* settings). The secret key comes from the
# environment only (a command line is visible to every user).
_S3_OPTIONS = ("endpoint", "access_key", "region")


def add_parsers(sub: Any, add_settings: Callable[..., None], common: tuple[str, ...]) -> None:
    p = sub.add_parser(
        "export",
        help="Write a complete, self-describing copy of the archive (objects as stored, index, "
        "audit log) to a folder or s3://bucket/prefix; again into the same place copies only new objects",
    )
    p.add_argument("dest", metavar="DEST", help="A folder, or s3://bucket/prefix")
    _add_location_options(p, "dest", "FILMLESS_EXPORT_S3_SECRET_KEY")
    add_settings(p, common)

    p = sub.add_parser(
        "restore",
        help="Rebuild an archive from an export into an empty index and object store (--data, "
        "--index, --storage), then verify it",
    )
    p.add_argument("source", metavar="SRC", help="The export: a folder, or s3://bucket/prefix")
    _add_location_options(p, "src", "FILMLESS_RESTORE_S3_SECRET_KEY")
    add_settings(p, common)

    rep = sub.add_parser("replication", help="Replicate the archive to a second store (another site)")
    rep_sub = rep.add_subparsers(dest="replication_command", required=True, metavar="ACTION")
    p = rep_sub.add_parser(
        "run",
        help="Copy every object to TARGET as it arrives (a queue in the index, retried on failure), "
        "with a restorable snapshot of the index (the layout of filmless export)",
    )
    p.add_argument("target", metavar="TARGET", help="A folder, or s3://bucket/prefix")
    p.add_argument("--once", action="store_true", help="One pass: copy what is pending, snapshot, exit")
    p.add_argument("--interval", type=float, default=30.0, help="Seconds between passes (default: 30)")
    _add_location_options(p, "dest", "FILMLESS_REPLICATION_S3_SECRET_KEY")
    add_settings(p, common)
    p = rep_sub.add_parser("status", help="Per target: objects replicated, pending, failing, last snapshot")
    p.add_argument("--json", action="store_true", help="Print JSON")
    add_settings(p, common)


def _add_location_options(p: argparse.ArgumentParser, prefix: str, secret_env: str) -> None:
    for name in _S3_OPTIONS:
        p.add_argument(
            f"--{prefix}-s3-{name.replace('_', '-')}",
            dest=f"{prefix}_s3_{name}",
            default=None,
            help=f"S3 {name.replace('_', ' ')} of an s3:// {prefix.upper()} (default: the s3_{name} setting)",
        )
    for name in ("secure", "path_style"):
        p.add_argument(
            f"--{prefix}-s3-{name.replace('_', '-')}",
            dest=f"{prefix}_s3_{name}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"(default: the s3_{name} setting)",
        )
    p.set_defaults(**{f"{prefix}_secret_env": secret_env})


def _location(spec: str, settings: Settings, args: argparse.Namespace, prefix: str) -> ObjectStore:
    if not spec.startswith("s3://"):
        if "://" in spec:
            raise ValueError(f"{spec!r}: give a folder or s3://bucket/prefix")
        if prefix == "src" and not Path(spec).is_dir():
            raise ValueError(f"{spec}: no such folder")
        return exporting.folder(Path(spec))
    from storage.objects.s3 import S3Config, S3ObjectStore, parse_s3_url

    bucket, key_prefix = parse_s3_url(spec)

    def option(name: str) -> Any:
        value = getattr(args, f"{prefix}_s3_{name}", None)
        return value if value is not None else getattr(settings, f"s3_{name}")

    secret = os.environ.get(getattr(args, f"{prefix}_secret_env"))
    if secret is None and settings.s3_secret_key is not None:
        secret = settings.s3_secret_key.get_secret_value()
    return S3ObjectStore(
        S3Config(
            endpoint=option("endpoint"),
            bucket=bucket,
            prefix=key_prefix,
            access_key=option("access_key"),
            secret_key=secret,
            region=option("region"),
            secure=bool(option("secure")),
            path_style=bool(option("path_style")),
            part_size=settings.s3_part_size,
        )
    )


class _Bar:
    def __init__(self, verb: str) -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{verb} " + "{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not err.is_terminal,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)


def export(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    try:
        dest = _location(args.dest, settings, args, "dest")
    except (ValueError, ArchiveError) as exc:
        err.print(f"[red]filmless export: {exc}[/red]", highlight=False, soft_wrap=True)
        return 2
    archive = build_archive(settings)
    bar = _Bar("exporting")
    try:
        with bar.progress:
            report = exporting.export(archive.index, archive.store, dest, progress=bar, filmless_version=__version__)
        outcome = "success" if report.ok else "failure"
        archive.index.record_audit(
            "EXPORT", outcome, actor=os.environ.get("USER"),
            detail={"objects": report.objects, "copied": report.copied, "errors": len(report.errors)},
        )
    except ArchiveError as exc:
        err.print(f"[red]filmless export: {exc}[/red]", highlight=False, soft_wrap=True)
        return 1
    finally:
        archive.close()
    table = Table(title="export summary", show_header=False)
    for name, count in report.rows.items():
        table.add_row(f"rows {name}", str(count))
    table.add_row("objects", str(report.objects))
    table.add_row("objects copied", str(report.copied))
    table.add_row("objects already there", str(report.skipped))
    table.add_row("bytes copied", f"{report.bytes_copied:,}")
    keys = report.manifest.get("encryption", {}).get("key_ids", [])
    if keys:
        table.add_row("encrypted with key ids", ", ".join(keys))
    out.print(table)
    for error in report.errors:
        out.print(f"[red]error[/red]: {error}", highlight=False, soft_wrap=True)
    if not report.ok:
        out.print("[red]export incomplete (no manifest.json written); run it again once fixed[/red]")
        return 1
    out.print(f"[green]export complete[/green]: {args.dest}", highlight=False, soft_wrap=True)
    return 0


def restore(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    try:
        source = _location(args.source, settings, args, "src")
    except (ValueError, ArchiveError) as exc:
        err.print(f"[red]filmless restore: {exc}[/red]", highlight=False, soft_wrap=True)
        return 2
    if settings.index is None or settings.storage is None:
        settings.data.mkdir(parents=True, exist_ok=True)
    index = Index(create_index_engine(settings.index_url))
    bar = _Bar("restoring")
    try:
        store = open_object_store(settings.storage_url, settings)
        with bar.progress:
            report = exporting.restore(source, index, store, progress=bar)
    except ArchiveError as exc:
        err.print(f"[red]filmless restore: {exc}[/red]", highlight=False, soft_wrap=True)
        return 1
    finally:
        index.dispose()
    table = Table(title="restore summary", show_header=False)
    for name, count in report.rows.items():
        table.add_row(f"rows {name}", str(count))
    table.add_row("objects", str(report.objects))
    table.add_row("bytes", f"{report.bytes:,}")
    if report.verify is not None:
        table.add_row("objects verified", str(report.verify.checked))
    out.print(table)
    problems = list(report.errors)
    if report.verify is not None:
        problems += report.verify.missing + report.verify.corrupt + report.verify.orphans + report.verify.errors
    for problem in problems:
        out.print(f"[red]error[/red]: {problem}", highlight=False, soft_wrap=True)
    if not report.ok:
        out.print("[red]restore failed[/red]")
        return 1
    out.print("[green]restore complete; all objects present and intact[/green]")
    return 0


def _target_name(spec: str) -> str:
    return spec if spec.startswith("s3://") else str(Path(spec).resolve())


def replication(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import threading

    from storage import replication as replicating

    if args.replication_command == "status":
        configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
        archive = build_archive(settings)
        try:
            states = replicating.status(archive.index)
        finally:
            archive.close()
        if args.json:
            print(json.dumps([s.as_dict() for s in states]))
        else:
            for s in states:  # one key/value table per target: readable at 80 columns
                table = Table(title=f"replication to {s.target}", show_header=False)
                table.add_row("replicated objects", str(s.replicated))
                table.add_row("pending", str(s.pending))
                table.add_row("failing (retried)", str(s.failing))
                table.add_row("not yet queued", str(s.not_enqueued))
                table.add_row("oldest pending", s.oldest_pending.isoformat(timespec="seconds") if s.oldest_pending else "-")
                table.add_row("last snapshot", s.snapshot_at or "-")
                table.add_row("in sync", "yes" if s.in_sync else "no")
                if s.last_error:
                    table.add_row("last error", s.last_error)
                out.print(table)
            if not states:
                out.print("no replication target yet (filmless replication run TARGET)")
        return 0 if all(s.failing == 0 for s in states) else 1

    configure_logging(settings.log_level)
    try:
        dest = _location(args.target, settings, args, "dest")
    except (ValueError, ArchiveError) as exc:
        err.print(f"[red]filmless replication: {exc}[/red]", highlight=False, soft_wrap=True)
        return 2
    archive = build_archive(settings)
    replicator = replicating.Replicator(
        archive.index, archive.store, dest, _target_name(args.target), filmless_version=__version__
    )
    try:
        if args.once:
            report = replicator.run_once()
            out.print(
                f"{report.copied} copied ({report.bytes:,} bytes), {report.failed} failed, "
                f"{report.pruned} pruned, snapshot {'written' if report.snapshot else 'not written'}",
                highlight=False,
            )
            for error in report.errors:
                out.print(f"[red]error[/red]: {error}", highlight=False, soft_wrap=True)
            return 1 if report.errors else 0
        stop = threading.Event()
        try:
            replicator.run_forever(stop, args.interval)
        except KeyboardInterrupt:
            stop.set()
        return 0
    finally:
        archive.close()


HANDLERS = {"export": export, "restore": restore, "replication": replication}
