"""What each `filmless` subcommand does (the parser lives in filmless/cli.py)."""

from __future__ import annotations

import argparse
import json
import socket
import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from filmless.bootstrap import Archive, build_archive, configure_logging
from filmless.settings import Settings
from storage import importer
from storage.errors import ArchiveError
from storage.index import ApplicationEntity
from storage.index.repository import SERVICES
from storage.ingest import CompressionMode
from storage.objects.spool import spool_usage
from storage.verify import verify as verify_archive

err = Console(stderr=True)
out = Console()


def _archive(settings: Settings) -> Archive:
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    return build_archive(settings)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from filmless.serve import serve as run

    return run(settings)


def import_(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    summary = importer.ImportSummary()
    try:
        candidates = list(importer.find(args.paths))
    except (FileNotFoundError, OSError, ArchiveError) as exc:
        err.print(f"[red]filmless import: {exc}[/red]")
        return 2
    progress = Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stored]} stored, {task.fields[dup]} duplicate, {task.fields[rej]} rejected"),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task("import", total=len(candidates), stored=0, dup=0, rej=0)
        for candidate in candidates:
            importer.import_one(archive.ingest, candidate, summary)
            progress.update(
                task, advance=1, stored=summary.stored + summary.replaced, dup=summary.duplicate, rej=len(summary.rejected)
            )
    if settings.compression.mode is CompressionMode.BACKGROUND and not args.no_wait:
        _drain_compression(archive)
    table = Table(title="import summary", show_header=False)
    table.add_row("stored", str(summary.stored))
    table.add_row("replaced (new version)", str(summary.replaced))
    table.add_row("duplicate (already stored)", str(summary.duplicate))
    table.add_row("rejected", str(len(summary.rejected)))
    out.print(table)
    for name, reason in summary.rejected:
        # soft_wrap: one line per file, never folded at the console width (80 columns when
        # the output is not a terminal), so the name can be read back by scripts.
        out.print(f"[red]rejected[/red] {name}: {reason}", highlight=False, soft_wrap=True)
    spooled = spool_usage(settings.spool_path / "objects")
    if spooled.objects:
        out.print(
            f"[yellow]{spooled.objects} objects are spooled under {settings.spool_path}[/yellow] (the object "
            "store failed): `filmless serve` on this data folder uploads them when it answers",
            highlight=False,
            soft_wrap=True,
        )
    archive.close()
    return 1 if summary.rejected else 0


def _drain_compression(archive: Archive) -> None:
    """Compress what the import queued, in this process, with a progress bar."""
    pending = archive.index.pending_jobs()
    if not pending:
        return
    archive.index.release_dead_claims(socket.gethostname())
    compressor = archive.compressor()
    with Progress(
        TextColumn("[bold]compressing"), BarColumn(), MofNCompleteColumn(), console=err, disable=not err.is_terminal
    ) as progress:
        task = progress.add_task("compress", total=pending)
        while True:
            done = compressor.run_once()
            if not done:
                break
            progress.update(task, advance=done)


def verify(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    repair = bool(getattr(args, "repair", False))
    report = verify_archive(archive.index, archive.store, repair=repair, min_age=float(getattr(args, "min_age", 3600.0)))
    out.print(f"checked {report.checked} objects", highlight=False)
    spooled = spool_usage(settings.spool_path / "objects")
    if spooled.objects:
        out.print(
            f"{spooled.objects} objects ({_bytes(spooled.bytes)}) are spooled on local disk, waiting for upload",
            highlight=False,
        )
    for item in report.removed:
        out.print(f"[yellow]removed[/yellow]: {item}", highlight=False, soft_wrap=True)
    for item in report.temporaries:
        out.print(f"temporary: {item} (a write in progress, or cut short by a crash)", highlight=False, soft_wrap=True)
    for title, items in (
        ("missing", report.missing),
        ("corrupt", report.corrupt),
        ("orphan", report.orphans),
        ("error", report.errors),
    ):
        for item in items:
            out.print(f"[red]{title}[/red]: {item}", highlight=False, soft_wrap=True)
    if report.ok:
        out.print("[green]all objects present and intact[/green]")
    else:
        out.print(
            f"[red]{len(report.missing)} missing, {len(report.corrupt)} corrupt, "
            f"{len(report.orphans)} orphan, {len(report.errors)} unreadable[/red]"
        )
    archive.close()
    return 0 if report.ok else 1


def stats(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    data = archive.index.stats()
    archive.close()
    data["saving_ratio"] = round(data["received_bytes"] / data["stored_bytes"], 3) if data["stored_bytes"] else None
    spooled = spool_usage(settings.spool_path / "objects")
    data["spooled"] = {"objects": spooled.objects, "bytes": spooled.bytes}
    if args.json:
        print(json.dumps(data))
        return 0
    table = Table(title="filmless archive")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("patients", "studies", "series", "instances", "prior_versions", "pending_compression"):
        table.add_row(key.replace("_", " "), f"{data[key]:,}")
    table.add_row("received", _bytes(data["received_bytes"]))
    table.add_row("stored", _bytes(data["stored_bytes"]))
    table.add_row("received / stored", f"{data['saving_ratio']}x" if data["saving_ratio"] else "-")
    if spooled.objects:
        table.add_row("spooled, awaiting upload", f"{spooled.objects:,} ({_bytes(spooled.bytes)})")
    out.print(table)
    if data["by_modality"]:
        mt = Table(title="per modality")
        for col in ("modality", "instances", "received", "stored", "ratio"):
            mt.add_column(col, justify="right")
        for modality, row in sorted(data["by_modality"].items()):
            ratio = row["received_bytes"] / row["stored_bytes"] if row["stored_bytes"] else 0
            mt.add_row(modality, f"{row['instances']:,}", _bytes(row["received_bytes"]), _bytes(row["stored_bytes"]), f"{ratio:.2f}x")
        out.print(mt)
    return 0


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{n:,} B"
        value /= 1024
    return f"{n} B"


def compress(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging(settings.log_level)
    archive = build_archive(settings)
    compressor = archive.compressor()
    if args.once:
        compressor.drain()
    else:
        stop = threading.Event()
        try:
            compressor.run_forever(stop)
        except KeyboardInterrupt:
            stop.set()
    archive.close()
    return 0


def echo(settings: Settings, args: argparse.Namespace) -> int:
    """C-ECHO the DICOM node of ``settings`` (its own host when it listens on every address);
    0 on a Success response, 1 otherwise, with one line saying why."""
    import logging

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if settings.log_level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the one line below says it
    host = "127.0.0.1" if settings.dicom_host in ("", "0.0.0.0", "::") else settings.dicom_host
    where = f"{settings.ae_title}@{host}:{settings.dicom_port}"
    try:
        ae = AE(ae_title=args.calling_ae)
    except ValueError as exc:
        err.print(f"filmless echo: calling AE title: {exc}", highlight=False)
        return 2
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    assoc = ae.associate(host, settings.dicom_port, ae_title=settings.ae_title)
    if not assoc.is_established:
        reason = "no association (nothing listening, or the connection was aborted)"
        answer = assoc.acceptor.primitive
        if assoc.is_rejected and answer is not None:
            reason = f"association rejected ({answer.result_str}, {answer.source_str}: {answer.reason_str})"
        err.print(f"filmless echo: {where}: {reason}", highlight=False, soft_wrap=True)
        return 1
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code == 0x0000:
        out.print(f"{where}: C-ECHO Success", highlight=False)
        return 0
    answered = "no response" if code is None else f"status 0x{int(code):04X}"
    err.print(f"filmless echo: {where}: C-ECHO failed ({answered})", highlight=False, soft_wrap=True)
    return 1


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Bring the index schema to this filmless's revision (``--check``: only report)."""
    from sqlalchemy.engine import make_url

    from storage.index import Index, create_index_engine

    configure_logging(settings.log_level)
    if settings.index is None:
        settings.data.mkdir(parents=True, exist_ok=True)
    where = make_url(settings.index_url).render_as_string(hide_password=True)
    index = Index(create_index_engine(settings.index_url))
    try:
        state = index.schema_state()
        if args.check or state.current or state.newer:
            out.print(f"index {where}: {state.describe()}", highlight=False, soft_wrap=True)
            return 0 if state.current else 1
        _before, after = index.create()
        out.print(
            f"index {where}: was {state.describe()}; now {after.describe()}", highlight=False, soft_wrap=True
        )
        return 0
    finally:
        index.dispose()


def ae(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        if args.ae_command == "add":
            title = args.ae_title.strip()
            if not 0 < len(title) <= 16 or "\\" in title:
                err.print("[red]an AE title is 1 to 16 characters without backslash[/red]")
                return 2
            if not 0 < args.port < 65536:
                err.print("[red]port must be between 1 and 65535[/red]")
                return 2
            services = {s.strip().lower() for s in args.services.split(",") if s.strip()}
            unknown = services - set(SERVICES)
            if unknown:
                err.print(f"[red]unknown service(s) {', '.join(sorted(unknown))}; use {', '.join(SERVICES)}[/red]")
                return 2
            flags = {f"may_{name}": name in services for name in SERVICES}
            archive.index.add_ae(
                ApplicationEntity(
                    title, args.host, args.port, args.description, ascii_only=args.ascii_only, **flags
                )
            )
            out.print(
                f"registered {title} at {args.host}:{args.port} ({', '.join(s for s in SERVICES if s in services) or 'no services'})",
                highlight=False,
            )
        elif args.ae_command == "list":
            aes = archive.index.list_aes()
            if args.json:
                print(json.dumps([a.__dict__ for a in aes]))
            else:
                table = Table(title="AE registry")
                for col in ("AE title", "host", "port", "services", "description"):
                    table.add_column(col)
                for a in aes:
                    granted = ",".join(a.services) + (" (ASCII)" if a.ascii_only else "")
                    table.add_row(a.ae_title, a.host, str(a.port), granted, a.description)
                out.print(table)
        elif args.ae_command == "remove":
            if not archive.index.remove_ae(args.ae_title.strip()):
                err.print(f"[red]no AE {args.ae_title!r} in the registry[/red]")
                return 1
            out.print(f"removed {args.ae_title}", highlight=False)
    finally:
        archive.close()
    return 0


