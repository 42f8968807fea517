"""DICOMweb benchmark: filmless and Orthanc's DICOMweb plugin, same studies, same run.

Run from the repository root (needs Debian's ``orthanc-dicomweb`` and ``wrk``)::

    .venv/bin/python -m bench.web                   # 300-slice CT + 49 small studies
    .venv/bin/python -m bench.web --slices 100 --repeat 50 --wrk-seconds 5

What it does: writes a synthetic 512x512 CT series (``--slices``) and ``--studies`` small
one-image studies (so a study search has a list to return), loads the same files into a fresh
Orthanc 1.10 with the DICOMweb plugin (DCMTK ``storescu``) and a fresh filmless
(``filmless import``: stored JPEG-LS, compressed before it answers), starts ``filmless serve``
(an admin user made from ``initial_admin_password``; every filmless request carries its bearer
token, so the token check is part of the measured time), waits until its background worker has
made the metadata of every instance and pre-rendered its first view and thumbnail (what a
running archive does after images arrive; the seconds are in the JSON) and then times, with one keep-alive
HTTP client per target, ``--repeat`` requests of each kind after ``--warmup`` untimed ones:

| kind | request |
|---|---|
| rendered | ``/studies/S/series/Se/instances/I/frames/1/rendered`` (image/jpeg), cycling over the series' instances |
| thumbnail | ``.../instances/I/thumbnail`` (Orthanc 1.10's plugin has none: its ``rendered?viewport=128,128``) |
| metadata | ``/studies/S/series/Se/metadata`` of the whole series |
| qido | ``/studies?PatientID=...`` (one study) and ``/studies?limit=100`` (the study list) |
| frame | ``.../frames/1`` as ``application/octet-stream`` with ``transfer-syntax=*`` (what viewers ask: as stored) and natively decoded (explicit VR little endian) |

then throughput with ``wrk -t2 -c16`` for QIDO and rendered (one URL each).

Results: a markdown table on stdout (p50/p95 ms and the filmless/Orthanc p50 ratio) and
``bench/results/web-<timestamp>.json``. A benchmark, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pydicom

from tests.fixtures.synthetic import ct_series, dx_image, write_datasets
from tests.peers import LOOPBACK, FilmlessServer, Orthanc, filmless_command, peer_env, run_storescu

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PASSWORD = "bench admin password"
AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"
NATIVE = "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


class BenchError(RuntimeError):
    pass


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def write_files(work: Path, slices: int, studies: int, seed: int) -> dict[str, Any]:
    ct = list(ct_series(slices, seed=seed))
    ct_paths = write_datasets(ct, work / "files" / "ct")
    others = [dx_image(rows=512, cols=512, seed=seed + 1 + n) for n in range(studies)]
    write_datasets(others, work / "files" / "dx")
    first = ct[0]
    return {
        "study": str(first.StudyInstanceUID),
        "series": str(first.SeriesInstanceUID),
        "patient_id": str(first.PatientID),
        "instances": [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct_paths],
        "files": slices + studies,
        "studies": 1 + studies,
    }


def wait_for_warmup(index: Path, instances: int, log: Callable[[str], None], timeout: float = 1800) -> float:
    """Seconds until the first compression worker has made every instance's metadata (and
    pre-rendered its first view and thumbnail), as a running archive does after an arrival."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
            done = conn.execute("SELECT count(*) FROM instance_metadata").fetchone()[0]
        if done >= instances:
            return round(time.monotonic() - start, 1)
        time.sleep(1.0)
    raise BenchError(f"the metadata warmer made {done} of {instances} in {timeout} s")


def measure(client: httpx.Client, urls: Sequence[str], headers: dict[str, str], repeat: int, warmup: int) -> dict[str, Any]:
    def get(url: str) -> float:
        t = time.perf_counter()
        reply = client.get(url, headers=headers)
        elapsed = (time.perf_counter() - t) * 1000
        if reply.status_code != 200:
            raise BenchError(f"GET {url}: {reply.status_code} {reply.text[:300]}")
        return elapsed

    for n in range(warmup):
        get(urls[n % len(urls)])
    times = [get(urls[n % len(urls)]) for n in range(repeat)]
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(percentile(times, 0.95), 2),
        "mean_ms": round(statistics.fmean(times), 2),
        "n": len(times),
    }


def run_wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> float | None:
    if shutil.which("wrk") is None:
        return None
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non_2xx:
        raise BenchError(f"wrk {url}: {non_2xx.group(1)} failed responses")
    return float(match.group(1)) if match else None


def kinds(base: str, facts: dict[str, Any], target: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    series = f"{base}/dicom-web/studies/{facts['study']}/series/{facts['series']}"
    instances = [f"{series}/instances/{uid}" for uid in facts["instances"]]
    thumbnail = [f"{u}/thumbnail" for u in instances] if target == "filmless" else [f"{u}/rendered?viewport=128,128" for u in instances]
    return {
        "rendered": ([f"{u}/frames/1/rendered" for u in instances], {"Accept": "image/jpeg"}),
        "thumbnail": (thumbnail, {"Accept": "image/jpeg"}),
        "metadata (series)": ([f"{series}/metadata"], {"Accept": "application/dicom+json"}),
        "qido PatientID": ([f"{base}/dicom-web/studies?PatientID={facts['patient_id']}"], {"Accept": "application/dicom+json"}),
        "qido study list": ([f"{base}/dicom-web/studies?limit=100"], {"Accept": "application/dicom+json"}),
        "frame as stored": ([f"{u}/frames/1" for u in instances], {"Accept": AS_STORED}),
        "frame native": ([f"{u}/frames/1" for u in instances], {"Accept": NATIVE}),
    }


def run(args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log("writing the synthetic studies ...")
    facts = write_files(work, args.slices, args.studies, args.seed)
    results: dict[str, Any] = {"facts": {k: v for k, v in facts.items() if k != "instances"}, "targets": {}}
    files = work / "files"

    log("loading Orthanc (storescu) ...")
    config = {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False, "StudiesMetadata": "Full"},
    }
    with Orthanc("ORTHANC", extra_config=config, workdir=work / "orthanc") as orthanc:
        run_storescu(files, LOOPBACK, orthanc.dicom_port, orthanc.aet, "BENCH", check=True, timeout=3600)
        with httpx.Client(timeout=120) as client:
            results["targets"]["orthanc"] = _measure_target(client, orthanc.base_url, facts, "orthanc", {}, args, log)

    log("loading filmless (filmless import, JPEG-LS) ...")
    data = work / "filmless" / "data"
    cli = filmless_command()
    subprocess.run([*cli, "import", "--data", str(data), str(files)], check=True, capture_output=True, env=peer_env(), timeout=3600)
    env = {"FILMLESS_INITIAL_ADMIN_PASSWORD": PASSWORD, "FILMLESS_LOG_LEVEL": "WARNING"}
    with FilmlessServer(data_dir=data, workdir=work / "filmless", env=env) as server:
        log("  waiting for the background worker's metadata and pre-rendering ...")
        results["filmless_warmup_s"] = wait_for_warmup(data / "index.sqlite", facts["files"], log)
        with httpx.Client(timeout=120) as client:
            token = client.post(f"{server.base_url}/api/token", data={"username": "admin", "password": PASSWORD}).json()
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            results["targets"]["filmless"] = _measure_target(client, server.base_url, facts, "filmless", auth, args, log)
    return results


def _measure_target(
    client: httpx.Client,
    base: str,
    facts: dict[str, Any],
    target: str,
    auth: dict[str, str],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Any]:
    out: dict[str, Any] = {"latency": {}, "wrk_requests_per_s": {}}
    for kind, (urls, headers) in kinds(base, facts, target).items():
        log(f"  {target}: {kind}")
        try:
            out["latency"][kind] = measure(client, urls, {**headers, **auth}, args.repeat, args.warmup)
        except BenchError as exc:
            out["latency"][kind] = {"error": str(exc)}
            log(f"    {exc}")
    if args.wrk_seconds > 0:
        table = kinds(base, facts, target)
        for kind in ("qido PatientID", "rendered"):
            urls, headers = table[kind]
            try:
                out["wrk_requests_per_s"][kind] = run_wrk(urls[len(urls) // 2], {**headers, **auth}, args.wrk_seconds, 16)
            except BenchError as exc:
                out["wrk_requests_per_s"][kind] = None
                log(f"    wrk: {exc}")
    return out


def markdown(results: dict[str, Any]) -> str:
    f = results["targets"].get("filmless", {}).get("latency", {})
    o = results["targets"].get("orthanc", {}).get("latency", {})
    lines = [
        "| request | filmless p50 / p95 ms | Orthanc p50 / p95 ms | ratio p50 |",
        "|---|---:|---:|---:|",
    ]
    for kind in [*f, *(k for k in o if k not in f)]:
        fk, ok = f.get(kind, {}), o.get(kind, {})

        def cell(m: dict[str, Any]) -> str:
            return f"{m['p50_ms']} / {m['p95_ms']}" if "p50_ms" in m else "error"

        ratio = f"{fk['p50_ms'] / ok['p50_ms']:.2f}" if "p50_ms" in fk and "p50_ms" in ok and ok["p50_ms"] else "-"
        lines.append(f"| {kind} | {cell(fk)} | {cell(ok)} | {ratio} |")
    wf = results["targets"].get("filmless", {}).get("wrk_requests_per_s", {})
    wo = results["targets"].get("orthanc", {}).get("wrk_requests_per_s", {})
    if wf or wo:
        lines += ["", "| wrk -c16 | filmless req/s | Orthanc req/s |", "|---|---:|---:|"]
        for kind in [*wf, *(k for k in wo if k not in wf)]:
            lines.append(f"| {kind} | {wf.get(kind)} | {wo.get(kind)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--slices", type=int, default=300, help="CT slices (default 300)")
    p.add_argument("--studies", type=int, default=49, help="extra one-image studies (default 49)")
    p.add_argument("--repeat", type=int, default=100, help="timed requests per kind (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first (default 5)")
    p.add_argument("--wrk-seconds", type=int, default=10, help="wrk duration per URL; 0: no wrk (default 10)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not DICOMWEB_PLUGIN.exists():
        print("bench.web needs Orthanc's DICOMweb plugin: apt-get install orthanc-dicomweb", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="filmless-bench-web-"))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        results = run(args, work, log)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    output = args.output or RESULTS_DIR / f"web-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\n(results: {output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
