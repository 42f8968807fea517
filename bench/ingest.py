"""Ingest benchmark: C-STORE a synthetic CT series into filmless, DCMTK storescp and Orthanc.

Run from the repository root::

    .venv/bin/python -m bench.ingest                      # 300 slices, all targets, once
    .venv/bin/python -m bench.ingest --slices 50 --targets orthanc,storescp --repeat 3

For every target and every association count (1, and 4 in parallel by default) a fresh
target is started, the series is sent with DCMTK ``/usr/bin/storescu``, and the time
from starting the first storescu to the exit of the last one is measured. Every
instance must arrive (counted at the target) or the benchmark fails. For filmless the
time until its background compression has drained (``pending_compression == 0``,
measured from the same start) and the stored bytes after draining are reported too.

With ``--repeat N`` each scenario runs N times (fresh target each time) and the table
shows the **median** seconds (min and max are in the JSON). Results are printed as a
markdown table and written to ``bench/results/ingest-<timestamp>.json``.

This is a benchmark, not a test: it is not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.peers import (
    LOOPBACK,
    ORTHANC,
    STORESCU,
    FilmlessServer,
    Orthanc,
    PeerError,
    StoreSCP,
    filmless_command,
    peer_env,
    storescu_command,
)

TARGETS = ("filmless", "filmless-pg-minio", "orthanc", "storescp")
DEFAULT_TARGETS = ("filmless", "orthanc", "storescp")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MB = 1_000_000
"""Megabyte as used in the table: 10^6 bytes."""


class BenchError(RuntimeError):
    """A scenario could not be measured correctly (sender failed, instances missing...)."""


# ------------------------------------------------------------------------- the series


def generate_series(n_slices: int, seed: int, out_dir: Path) -> list[Path]:
    """Write a synthetic CT series of ``n_slices`` files (Explicit VR Little Endian).

    ``tests.fixtures.synthetic`` is imported here, not at module import, so that
    ``--help`` works without it.
    """
    try:
        from tests.fixtures import synthetic
    except ImportError as exc:  # pragma: no cover - depends on the checkout
        raise SystemExit(f"bench.ingest needs tests/fixtures/synthetic.py ({exc})") from exc
    from pydicom.uid import ExplicitVRLittleEndian

    paths = synthetic.write_datasets(
        synthetic.ct_series(n_slices, seed=seed), out_dir, transfer_syntax=ExplicitVRLittleEndian
    )
    return sorted(Path(p) for p in paths)


def split(items: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split ``items`` into ``parts`` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    chunks: list[list[Path]] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return [c for c in chunks if c]


# --------------------------------------------------------------------------- sending


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_until_quiet(max_busy: float = 0.15, window: float = 0.3, timeout: float = 20.0) -> float:
    """Wait until the machine's CPUs were at most ``max_busy`` busy over ``window`` seconds
    (or ``timeout`` passed); returns the seconds waited.

    A target is "ready" once its port answers, but it may still be starting: filmless's
    worker processes import their modules for a second or two after the DICOM port opens.
    Every target gets the same wait, so none is measured while it still starts up."""
    start = time.monotonic()
    busy0, total0 = _cpu_times()
    while time.monotonic() - start < timeout:
        time.sleep(window)
        busy1, total1 = _cpu_times()
        if total1 > total0 and (busy1 - busy0) / (total1 - total0) <= max_busy:
            break
        busy0, total0 = busy1, total1
    return time.monotonic() - start


def send(
    files: Sequence[Path],
    port: int,
    called_aet: str,
    associations: int,
    log_dir: Path,
    *,
    storescu_args: Sequence[str] = (),
    timeout: float = 1800.0,
) -> tuple[float, float]:
    """Send ``files`` with ``associations`` parallel storescu processes.

    Returns:
        ``(t0, seconds)``: the ``time.perf_counter()`` value just before the first
        storescu was started, and the seconds until the last one exited.

    Raises:
        BenchError: a storescu exited with a non-zero status (its log tail is included).
    """
    env = peer_env()
    commands = [
        storescu_command(chunk, LOOPBACK, port, called_aet, "BENCH", extra_args=storescu_args)
        for chunk in split(files, associations)
    ]
    logs: list[IO[bytes]] = [open(log_dir / f"storescu-{i}.log", "wb") for i in range(len(commands))]  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []
    wait_until_quiet()
    try:
        t0 = time.perf_counter()
        for command, log in zip(commands, logs, strict=True):
            procs.append(
                subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            )
        for proc in procs:
            proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        seconds = time.perf_counter() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        details = "\n".join(
            f"--- storescu #{i} exited with {code}:\n{(log_dir / f'storescu-{i}.log').read_text(errors='replace')[-3000:]}"
            for i, code in failed
        )
        raise BenchError(f"{len(failed)} of {len(procs)} storescu processes failed\n{details}")
    return t0, seconds


def wait_for_count(count: Callable[[], int], expected: int, what: str, timeout: float = 30.0) -> int:
    """Poll ``count()`` until it equals ``expected``; fail loudly if it does not.

    A target that acknowledged every C-STORE should already hold them all; the grace
    period only covers targets that make instances visible asynchronously.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = count()
        if got == expected:
            return got
        if got > expected or time.monotonic() >= deadline:
            raise BenchError(f"{what}: expected {expected} instances, found {got}")
        time.sleep(0.1)


# ------------------------------------------------------------------------- scenarios


@dataclass
class Run:
    """One measured send of the series to one fresh target."""

    target: str
    associations: int
    repeat: int
    instances: int
    seconds: float
    sent_bytes: int
    received_bytes: int
    stored_bytes: int
    seconds_until_compressed: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Options:
    """What the command line asked for."""

    files: list[Path]
    sent_bytes: int
    storescu_args: list[str]
    filmless_args: list[str]
    filmless_cmd: list[str] | None
    keep: bool
    compress_timeout: float


@contextmanager
def _scenario_dir(keep: bool) -> Iterator[Path]:
    """A temporary directory for storescu logs; kept (and announced) with ``--keep``."""
    path = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        yield path
    finally:
        if keep:
            print(f"  (kept {path})", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_orthanc(opts: Options, associations: int, repeat: int) -> Run:
    """Send the series to a fresh Orthanc and measure."""
    n = len(opts.files)
    with _scenario_dir(opts.keep) as logs, Orthanc("ORTHANC", keep=opts.keep) as orthanc:
        _, seconds = send(opts.files, orthanc.dicom_port, orthanc.aet, associations, logs, storescu_args=opts.storescu_args)
        instances = wait_for_count(orthanc.instance_count, n, "orthanc")
        stats = orthanc.statistics()
        return Run(
            target="orthanc",
            associations=associations,
            repeat=repeat,
            instances=instances,
            seconds=seconds,
            sent_bytes=opts.sent_bytes,
            received_bytes=opts.sent_bytes,
            stored_bytes=int(stats["TotalDiskSize"]),
            details={
                "storage_dir_bytes": orthanc.storage_dir_bytes(),
                "index_dir_bytes": orthanc.index_dir_bytes(),
                "version": orthanc.rest("/system").get("Version"),
            },
        )


def run_storescp(opts: Options, associations: int, repeat: int) -> Run:
    """Send the series to a fresh DCMTK storescp (``--fork``) and measure."""
    n = len(opts.files)
    with _scenario_dir(opts.keep) as logs, StoreSCP("STORESCP", fork=True, keep=opts.keep) as scp:
        _, seconds = send(opts.files, scp.port, scp.aet, associations, logs, storescu_args=opts.storescu_args)
        instances = wait_for_count(scp.file_count, n, "storescp")
        return Run(
            target="storescp",
            associations=associations,
            repeat=repeat,
            instances=instances,
            seconds=seconds,
            sent_bytes=opts.sent_bytes,
            received_bytes=opts.sent_bytes,
            stored_bytes=scp.stored_bytes(),
        )


def run_filmless(opts: Options, associations: int, repeat: int) -> Run:
    """Send the series to a fresh ``filmless serve`` (SQLite index, local files)."""
    return _run_filmless(opts, associations, repeat, "filmless", {})


def run_filmless_pg_minio(opts: Options, associations: int, repeat: int) -> Run:
    """The same on the production storage: a fresh PostgreSQL (Debian's server, PostgreSQL's
    durable defaults) and a fresh MinIO (the pinned build), both on 127.0.0.1."""
    from tests.object_stores import MinioServer, minio_binary
    from tests.postgres import PostgresServer

    binary = minio_binary()
    if binary is None:
        raise BenchError("MinIO is not installed (scripts/install-object-stores.sh)")
    with PostgresServer(durable=True) as pg, MinioServer(binary) as minio:
        env = {
            "FILMLESS_INDEX": pg.create_database(),
            "FILMLESS_STORAGE": f"s3://{minio.create_bucket('filmless')}/bench",
            **minio.filmless_env(),
        }
        return _run_filmless(opts, associations, repeat, "filmless-pg-minio", env)


def _run_filmless(opts: Options, associations: int, repeat: int, target: str, env: dict[str, str]) -> Run:
    """Send the series to a fresh ``filmless serve``, measure, then wait for compression."""
    n = len(opts.files)
    with (
        _scenario_dir(opts.keep) as logs,
        FilmlessServer(
            "FILMLESS", extra_args=opts.filmless_args, command=opts.filmless_cmd, keep=opts.keep, env=env
        ) as server,
    ):
        t0, seconds = send(opts.files, server.dicom_port, server.aet, associations, logs, storescu_args=opts.storescu_args)
        instances = wait_for_count(lambda: int(server.stats()["instances"]), n, "filmless")
        final = server.wait_compressed(timeout=opts.compress_timeout, interval=0.05)
        until_compressed = time.perf_counter() - t0
        if int(final["instances"]) != n:
            raise BenchError(f"filmless: {final['instances']} instances after compression, expected {n}")
        received = int(final.get("received_bytes") or 0) or opts.sent_bytes
        return Run(
            target=target,
            associations=associations,
            repeat=repeat,
            instances=instances,
            seconds=seconds,
            sent_bytes=opts.sent_bytes,
            received_bytes=received,
            stored_bytes=int(final["stored_bytes"]),
            seconds_until_compressed=until_compressed,
            details={"stats": dict(final)},
        )


RUNNERS: dict[str, Callable[[Options, int, int], Run]] = {
    "filmless": run_filmless,
    "filmless-pg-minio": run_filmless_pg_minio,
    "orthanc": run_orthanc,
    "storescp": run_storescp,
}


# --------------------------------------------------------------------------- results


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per (target, associations): median seconds over the repeats."""
    rows: list[dict[str, Any]] = []
    keys = sorted({(r.target, r.associations) for r in runs}, key=lambda k: (TARGETS.index(k[0]), k[1]))
    for target, assoc in keys:
        group = [r for r in runs if r.target == target and r.associations == assoc]
        seconds = statistics.median(r.seconds for r in group)
        last = group[-1]
        compressed = [r.seconds_until_compressed for r in group if r.seconds_until_compressed is not None]
        rows.append(
            {
                "target": target,
                "associations": assoc,
                "runs": len(group),
                "instances": last.instances,
                "seconds": seconds,
                "seconds_min": min(r.seconds for r in group),
                "seconds_max": max(r.seconds for r in group),
                "instances_per_second": last.instances / seconds,
                "mb_per_second": last.received_bytes / MB / seconds,
                "received_bytes": last.received_bytes,
                "stored_bytes": last.stored_bytes,
                "received_to_stored": last.received_bytes / last.stored_bytes if last.stored_bytes else None,
                "seconds_until_compressed": statistics.median(compressed) if compressed else None,
            }
        )
    return rows


def ratios(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """filmless instances/s divided by Orthanc instances/s, per association count."""
    out: dict[str, float] = {}
    by = {(r["target"], r["associations"]): r for r in rows}
    for (target, assoc), row in by.items():
        other = by.get(("orthanc", assoc))
        if target == "filmless" and other:
            out[f"{assoc}"] = row["instances_per_second"] / other["instances_per_second"]
        elif target.startswith("filmless-") and other:
            out[f"{assoc} {target}"] = row["instances_per_second"] / other["instances_per_second"]
    return out


def markdown(rows: Sequence[dict[str, Any]], ratio: dict[str, float], repeat: int) -> str:
    """The results as a markdown table (plus the filmless/Orthanc ratio lines)."""
    head = (
        "| target | associations | instances | seconds | instances/s | MB/s | stored bytes "
        "| received/stored | s until compressed |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        ratio_text = f"{r['received_to_stored']:.2f}" if r["received_to_stored"] else "-"
        compressed = f"{r['seconds_until_compressed']:.2f}" if r["seconds_until_compressed"] is not None else "-"
        lines.append(
            f"| {r['target']} | {r['associations']} | {r['instances']} | {r['seconds']:.3f} "
            f"| {r['instances_per_second']:.1f} | {r['mb_per_second']:.1f} | {r['stored_bytes']:,} "
            f"| {ratio_text} | {compressed} |"
        )
    what = "median of %d runs" % repeat if repeat > 1 else "1 run"
    lines.append("")
    lines.append(f"seconds: {what}, from the start of the first storescu to the exit of the last; MB = 10^6 bytes")
    for key, value in sorted(ratio.items(), key=lambda kv: (int(kv[0].split()[0]), kv[0])):
        assoc, _, variant = key.partition(" ")
        lines.append(f"{variant or 'filmless'} / Orthanc instances/s, {assoc} association(s): {value:.2f}")
    return "\n".join(lines)


def _version(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return next((line.strip() for line in out.splitlines() if line.strip()), None)


def environment(args: argparse.Namespace, filmless_cmd: list[str] | None) -> dict[str, Any]:
    """What the numbers depend on, for the JSON record."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "storescu": _version([str(STORESCU), "--version"]),
        "orthanc": _version([str(ORTHANC), "--version"]) if "orthanc" in args.targets else None,
        "filmless_command": filmless_cmd or filmless_command(),
        "filmless_args": args.filmless_args,
        "storescu_args": args.storescu_args,
    }


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="CT slices in the series (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per scenario; the table shows the median (default 1)"
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="comma-separated subset of filmless,orthanc,storescp (default all)",
    )
    parser.add_argument(
        "--associations",
        default="1,4",
        help="comma-separated numbers of parallel storescu associations (default 1,4)",
    )
    parser.add_argument("--filmless-args", default="", help='extra arguments for "filmless serve", one string')
    parser.add_argument(
        "--filmless-cmd",
        default=None,
        help="command prefix that runs the filmless CLI (default: the venv's filmless, else python -m filmless.cli)",
    )
    parser.add_argument("--storescu-args", default="", help='extra storescu options, one string (e.g. "-R")')
    parser.add_argument(
        "--compress-timeout", type=float, default=1800.0, help="seconds to wait for filmless compression"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default bench/results/ingest-<ts>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the targets' directories and storescu logs")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown or not args.targets:
        parser.error(f"unknown target(s) {unknown}; choose from {','.join(TARGETS)}")
    try:
        args.associations = [int(a) for a in args.associations.split(",") if a.strip()]
    except ValueError:
        parser.error("--associations takes integers, e.g. 1,4")
    if args.slices < 1 or args.repeat < 1 or any(a < 1 for a in args.associations):
        parser.error("--slices, --repeat and --associations must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the process exit status (1 if any scenario failed)."""
    args = parse_args(argv)
    filmless_cmd = shlex.split(args.filmless_cmd) if args.filmless_cmd else None
    runs: list[Run] = []
    errors: list[dict[str, Any]] = []
    started = time.strftime("%Y%m%dT%H%M%S")

    with tempfile.TemporaryDirectory(prefix="bench-series-") as tmp:
        print(f"generating {args.slices} CT slices ...", file=sys.stderr)
        t = time.perf_counter()
        files = generate_series(args.slices, args.seed, Path(tmp))
        sent_bytes = sum(p.stat().st_size for p in files)
        print(
            f"  {len(files)} files, {sent_bytes / MB:.1f} MB in {time.perf_counter() - t:.1f} s", file=sys.stderr
        )
        if len(files) != args.slices:
            raise SystemExit(f"generator wrote {len(files)} files, expected {args.slices}")
        opts = Options(
            files=files,
            sent_bytes=sent_bytes,
            storescu_args=shlex.split(args.storescu_args),
            filmless_args=shlex.split(args.filmless_args),
            filmless_cmd=filmless_cmd,
            keep=args.keep,
            compress_timeout=args.compress_timeout,
        )
        # Warm storescu's binary and libraries into the page cache (not timed).
        subprocess.run([str(STORESCU), "--version"], capture_output=True, check=False)

        broken: set[str] = set()
        for repeat in range(args.repeat):
            for assoc in args.associations:
                for target in args.targets:
                    if target in broken:
                        continue
                    os.sync()  # start each scenario with no dirty pages from the previous one
                    label = f"{target}, {assoc} association(s), run {repeat + 1}/{args.repeat}"
                    print(f"{label} ...", file=sys.stderr)
                    try:
                        run = RUNNERS[target](opts, assoc, repeat)
                    except (BenchError, PeerError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
                        broken.add(target)
                        errors.append({"target": target, "associations": assoc, "repeat": repeat, "error": str(exc)})
                        print(f"\n!!! {label} FAILED:\n{exc}\n!!! skipping further {target} runs\n", file=sys.stderr)
                        continue
                    runs.append(run)
                    extra = (
                        f", compressed after {run.seconds_until_compressed:.2f} s"
                        if run.seconds_until_compressed is not None
                        else ""
                    )
                    print(
                        f"  {run.instances} instances in {run.seconds:.3f} s "
                        f"({run.instances / run.seconds:.1f}/s){extra}",
                        file=sys.stderr,
                    )

    rows = summarize(runs)
    ratio = ratios(rows)
    if rows:
        print(markdown(rows, ratio, args.repeat))
    record = {
        "benchmark": "ingest",
        "timestamp": started,
        "aggregate": "median",
        "slices": args.slices,
        "seed": args.seed,
        "repeat": args.repeat,
        "associations": args.associations,
        "targets": args.targets,
        "series": {"files": args.slices, "bytes": sent_bytes, "transfer_syntax": "1.2.840.10008.1.2.1"},
        "environment": environment(args, filmless_cmd),
        "summary": rows,
        "filmless_over_orthanc_instances_per_second": ratio,
        "runs": [asdict(r) for r in runs],
        "errors": errors,
    }
    output: Path = args.output or RESULTS_DIR / f"ingest-{started}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nresults: {output}", file=sys.stderr)
    if errors:
        print(f"FAILED: {len(errors)} scenario(s) failed: " + ", ".join(e["target"] for e in errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
