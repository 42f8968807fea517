"""C-FIND benchmark: STUDY-level query latency of filmless and Orthanc, and of filmless at scale.

Run from the repository root::

    .venv/bin/python -m bench.query                       # both parts, default sizes
    .venv/bin/python -m bench.query --parts side-by-side --studies 100 --repeat 50
    .venv/bin/python -m bench.query --parts scale --scale-studies 1000 --scale-instances 100000

**Side by side.** ``--studies`` small synthetic studies (64x64 images, Vietnamese patient
names in ``ISO_IR 192``, study dates over twelve years, several modalities) are written once
and loaded into a fresh Orthanc (DCMTK ``storescu``) and a fresh filmless (``filmless import``
before ``filmless serve``). Then, for each target, one pynetdicom association (Study Root
Query/Retrieve Information Model - FIND) runs every query kind ``--repeat`` times; each query
is timed from ``send_c_find`` until its final (non-pending) response has been received.

**Scale.** A fresh filmless index is filled directly (SQLAlchemy Core ``executemany`` into the
patient/study/series/instance tables; no object files: C-FIND never reads them) with
``--scale-studies`` studies and ``--scale-instances`` instances, ``filmless serve`` is started
on it and the same query kinds run ``--scale-repeat`` times.

Query kinds (all at STUDY level, with the same return keys): exact PatientID, PatientName
prefix wildcard (ASCII), StudyDate range, universal (every study), and PatientName prefix
with Vietnamese diacritics (informational: filmless matches person names accent-insensitively,
Orthanc does not, so the counts may legitimately differ). Every answer is checked against the
generator's ground truth and, side by side, against the other target's set of studies.

Results: a markdown table on stdout and ``bench/results/query-<timestamp>.json``. The exit
status is 1 when a target failed, or when any non-accent query returned other studies than
the ground truth (discrepancies are printed loudly).

This is a benchmark, not a test: it is not collected by pytest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.peers import (
    LOOPBACK,
    ORTHANC,
    FilmlessServer,
    Orthanc,
    PeerError,
    filmless_command,
    peer_env,
    run_storescu,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENT_AET = "BENCHSCU"
PARTS = ("side-by-side", "scale")
TARGETS = ("filmless", "orthanc")
UID_ROOT = "1.2.826.0.1.3680043.8.498.77."
"""pydicom's UID root plus a branch of our own: every UID here is deterministic."""

RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
    "StudyInstanceUID",
)


class BenchError(RuntimeError):
    """A target could not be loaded or queried correctly."""


# ------------------------------------------------------------------------- names


# Family names with rough Vietnamese frequencies (percent); the generator is a made-up population.
FAMILY_NAMES: tuple[tuple[str, float], ...] = (
    ("Nguyễn", 38), ("Trần", 11), ("Lê", 9.5), ("Phạm", 7), ("Hoàng", 5.1), ("Huỳnh", 4.5),
    ("Phan", 4.5), ("Vũ", 3.9), ("Võ", 3), ("Đặng", 2.1), ("Bùi", 2), ("Đỗ", 1.4),
    ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1), ("Lý", 0.5), ("Đinh", 0.5), ("Trương", 0.5),
    ("Lâm", 0.4), ("Mai", 0.4), ("Trịnh", 0.3), ("Đoàn", 0.3), ("Tạ", 0.2), ("Châu", 0.2),
)
MIDDLE_M = ("Văn", "Hữu", "Đức", "Minh", "Quốc", "Thành", "Công", "Xuân", "Hoàng", "Ngọc")
MIDDLE_F = ("Thị", "Ngọc", "Thu", "Thanh", "Kim", "Mỹ", "Hồng", "Bích", "Diệu", "Phương")
GIVEN_M = ("Anh", "Bảo", "Cường", "Dũng", "Đạt", "Đức", "Hải", "Hiếu", "Hùng", "Huy", "Khải",
           "Khoa", "Long", "Lộc", "Nam", "Nghĩa", "Phúc", "Quang", "Sơn", "Tài", "Thắng", "Tâm",
           "Thịnh", "Toàn", "Trí", "Trung", "Tuấn", "Tùng", "Việt", "Vinh")
GIVEN_F = ("Anh", "Ánh", "Châu", "Diễm", "Dung", "Giang", "Hà", "Hằng", "Hạnh", "Hiền", "Hoa",
           "Hương", "Lan", "Liên", "Linh", "Loan", "Mai", "My", "Nga", "Ngân", "Nhung", "Oanh",
           "Phượng", "Quyên", "Thảo", "Trang", "Trinh", "Tuyết", "Vân", "Yến")

# Study types: modalities (series in order), SOP classes, descriptions, instance counts.
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
MG_IMAGE = "1.2.840.10008.5.1.4.1.1.1.2"
PT_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SOP_CLASS = {"CT": CT_IMAGE, "MR": MR_IMAGE, "CR": CR_IMAGE, "DX": DX_IMAGE, "US": US_IMAGE,
             "MG": MG_IMAGE, "PT": PT_IMAGE, "SR": BASIC_TEXT_SR}
BODY_PART = {"CT": "CHEST", "MR": "HEAD", "CR": "CHEST", "DX": "CHEST", "US": "ABDOMEN",
             "MG": "BREAST", "PT": "WHOLEBODY", "SR": "CHEST"}


@dataclass(frozen=True)
class StudyType:
    """A kind of study: its weight in the mix, its series and how big they are at scale."""

    name: str
    weight: float
    descriptions: tuple[str, ...]
    series: tuple[tuple[str, int, int], ...]
    """(modality, min series, max series) in order, e.g. ("CT", 2, 4), ("SR", 1, 1)."""
    scale_instances: dict[str, tuple[int, int]]
    """Instances per series at scale, per modality (min, max)."""
    received_size: dict[str, int]
    """Bytes of one received instance, per modality (a real-sized image)."""


STUDY_TYPES: tuple[StudyType, ...] = (
    StudyType("CT", 22, ("CT ngực không cản quang", "CT bụng có cản quang", "CT sọ não"),
              (("CT", 2, 4),), {"CT": (60, 420)}, {"CT": 526_000}),
    StudyType("CT+SR", 6, ("CT ngực bụng có cản quang",), (("CT", 2, 3), ("SR", 1, 1)),
              {"CT": (80, 400), "SR": (1, 1)}, {"CT": 526_000, "SR": 6_000}),
    StudyType("MR", 12, ("MRI sọ não", "MRI cột sống thắt lưng", "MRI khớp gối"),
              (("MR", 3, 8),), {"MR": (18, 60)}, {"MR": 132_000}),
    StudyType("CR", 16, ("X quang ngực thẳng", "X quang cột sống"), (("CR", 1, 2),),
              {"CR": (1, 2)}, {"CR": 8_400_000}),
    StudyType("DX", 16, ("X quang ngực thẳng", "X quang khớp gối hai bên"), (("DX", 1, 2),),
              {"DX": (1, 3)}, {"DX": 15_000_000}),
    StudyType("US", 16, ("Siêu âm bụng tổng quát", "Siêu âm tuyến giáp"), (("US", 1, 2),),
              {"US": (6, 40)}, {"US": 922_000}),
    StudyType("MG", 6, ("Chụp nhũ ảnh hai bên",), (("MG", 1, 1),), {"MG": (4, 4)},
              {"MG": 27_000_000}),
    StudyType("PT+CT", 6, ("PET/CT toàn thân",), (("PT", 1, 1), ("CT", 1, 2)),
              {"PT": (200, 400), "CT": (150, 400)}, {"PT": 33_000, "CT": 526_000}),
)
COMPRESSION_RATIO = {"CT": 3.9, "MR": 2.6, "CR": 2.9, "DX": 3.1, "US": 1.0, "MG": 2.7, "PT": 2.0, "SR": 1.0}
"""Rough received/stored ratios (JPEG-LS lossless), for plausible stored sizes at scale."""


def fold(value: str) -> str:
    """The accent- and case-folded form filmless matches person names on (storage/text.py)."""
    try:
        from storage.text import fold as filmless_fold
    except ImportError:  # pragma: no cover - the checkout always has it
        decomposed = unicodedata.normalize("NFD", value).replace("đ", "d").replace("Đ", "D")
        return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return filmless_fold(value)


def _weighted(rng: random.Random, items: Sequence[tuple[Any, float]]) -> Any:
    total = sum(w for _, w in items)
    x = rng.uniform(0, total)
    for item, w in items:
        x -= w
        if x <= 0:
            return item
    return items[-1][0]


# ------------------------------------------------------------------ the population


@dataclass
class PatientPlan:
    pk: int
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass
class SeriesPlan:
    uid: str
    modality: str
    number: int
    instances: int


@dataclass
class StudyPlan:
    """One generated study, which is also the ground truth the answers are checked against."""

    pk: int
    uid: str
    patient: PatientPlan
    date: str
    time: str
    accession: str
    description: str
    type_name: str
    series: list[SeriesPlan] = field(default_factory=list)

    @property
    def n_instances(self) -> int:
        return sum(s.instances for s in self.series)

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series if s.instances > 0})


def make_population(
    n_studies: int,
    seed: int,
    *,
    instances_per_series: tuple[int, int] | None = None,
    total_instances: int | None = None,
) -> list[StudyPlan]:
    """A deterministic list of studies with their patients and series.

    Either ``instances_per_series`` (min, max) for the small side-by-side studies, or
    ``total_instances`` for the scale part: the study types' realistic series sizes are then
    scaled so that the instances add up to exactly that number.
    """
    rng = random.Random(seed)
    first_day = dt.date(2014, 1, 1).toordinal()
    last_day = dt.date(2025, 12, 31).toordinal()
    patients: list[PatientPlan] = []
    studies: list[StudyPlan] = []
    types = [(t, t.weight) for t in STUDY_TYPES]
    used_names: set[str] = set()
    while len(studies) < n_studies:
        sex = rng.choice("MF")
        family = _weighted(rng, FAMILY_NAMES)
        for _ in range(20):  # a few collisions are fine, but keep names mostly distinct
            middle = rng.choice(MIDDLE_M if sex == "M" else MIDDLE_F)
            given = rng.choice(GIVEN_M if sex == "M" else GIVEN_F)
            name = unicodedata.normalize("NFC", f"{family}^{middle} {given}")
            if name not in used_names:
                break
        used_names.add(name)
        born = dt.date.fromordinal(rng.randint(dt.date(1935, 1, 1).toordinal(), dt.date(2022, 12, 31).toordinal()))
        patient = PatientPlan(
            pk=len(patients) + 1,
            patient_id=f"BN{seed % 100:02d}{len(patients) + 1:07d}",
            name=name,
            birth_date=born.strftime("%Y%m%d"),
            sex=sex,
        )
        patients.append(patient)
        n_for_patient = min(n_studies - len(studies), 1 + min(int(rng.expovariate(1 / 1.6)), 11))
        for _ in range(n_for_patient):
            st: StudyType = _weighted(rng, types)
            day = dt.date.fromordinal(rng.randint(max(first_day, born.toordinal()), last_day))
            minutes = rng.randint(6 * 60, 20 * 60)
            i = len(studies) + 1
            study = StudyPlan(
                pk=i,
                uid=f"{UID_ROOT}{seed}.1.{i}",
                patient=patient,
                date=day.strftime("%Y%m%d"),
                time=f"{minutes // 60:02d}{minutes % 60:02d}{rng.randint(0, 59):02d}",
                accession=f"A{day.strftime('%y%m%d')}{i % 100000:05d}",
                description=rng.choice(st.descriptions),
                type_name=st.name,
            )
            number = 0
            for modality, lo, hi in st.series:
                for _ in range(rng.randint(lo, hi)):
                    number += 1
                    if modality == "SR":
                        count = 1
                    elif instances_per_series is not None:
                        count = rng.randint(*instances_per_series)
                    else:
                        count = rng.randint(*st.scale_instances[modality])
                    study.series.append(
                        SeriesPlan(uid=f"{UID_ROOT}{seed}.2.{i}.{number}", modality=modality, number=number, instances=count)
                    )
            studies.append(study)
    if total_instances is not None:
        _rescale(studies, total_instances)
    return studies


def _rescale(studies: list[StudyPlan], total: int) -> None:
    """Scale the series sizes so that all instances add up to exactly ``total``."""
    all_series = [s for st in studies for s in st.series]
    if total < len(studies):
        raise ValueError(f"{total} instances cannot fill {len(studies)} studies")
    if total < len(all_series):  # too few instances for every series: keep one series a study
        for st in studies:
            del st.series[1:]
        all_series = [s for st in studies for s in st.series]
    natural = sum(s.instances for s in all_series)
    factor = total / natural
    for s in all_series:
        s.instances = max(1, round(s.instances * factor))
    diff = total - sum(s.instances for s in all_series)
    by_size = sorted(all_series, key=lambda s: -s.instances)
    i = 0
    while diff != 0:
        s = by_size[i % len(by_size)]
        if diff > 0:
            s.instances += 1
            diff -= 1
        elif s.instances > 1:
            s.instances -= 1
            diff += 1
        i += 1


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class QueryKind:
    """One kind of query: the matching keys it sets and how to compute the ground truth."""

    name: str
    label: str
    keys: dict[str, str]
    accent: bool = False
    """Accent-dependent: the targets may legitimately differ (not a discrepancy)."""


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z", re.S)


def ground_truth(kind: QueryKind, studies: Sequence[StudyPlan]) -> set[str]:
    """StudyInstanceUIDs the query must match, under filmless's rules (names accent- and
    case-folded; equal to plain case-insensitive matching for the non-accent kinds)."""
    pid = kind.keys.get("PatientID")
    name = kind.keys.get("PatientName")
    name_rx = _wildcard_regex(fold(name)) if name is not None else None
    date = kind.keys.get("StudyDate")
    lo, _, hi = (date or "").partition("-") if date and "-" in date else (date or "", "", date or "")
    unknown = set(kind.keys) - {"PatientID", "PatientName", "StudyDate"}
    if unknown:
        raise ValueError(f"no ground truth for {sorted(unknown)}")

    def matches(s: StudyPlan) -> bool:
        if pid is not None and s.patient.patient_id != pid:
            return False
        if name_rx is not None and not name_rx.match(fold(s.patient.name)):
            return False
        if date is not None and not ((not lo or s.date >= lo) and (not hi or s.date <= hi)):
            return False
        return True

    return {s.uid for s in studies if matches(s)}


def plain_truth(kind: QueryKind, studies: Sequence[StudyPlan]) -> set[str]:
    """Like :func:`ground_truth` but with names matched case-insensitively only (no folding):
    for non-accent kinds the two must agree, or the kind is not accent-neutral after all."""
    if "PatientName" not in kind.keys:
        return ground_truth(kind, studies)
    rx = re.compile(_wildcard_regex(kind.keys["PatientName"]).pattern, re.S | re.I)
    others = QueryKind(kind.name, kind.label, {k: v for k, v in kind.keys.items() if k != "PatientName"})
    base = ground_truth(others, studies) if others.keys else {s.uid for s in studies}
    return {s.uid for s in studies if s.uid in base and rx.match(s.patient.name)}


def query_kinds(studies: Sequence[StudyPlan], args: argparse.Namespace) -> list[QueryKind]:
    """The query kinds for this population: the exact PatientID is a patient with three
    studies (or the closest to three; the smallest ID among ties), the others come from the
    command line."""
    per_patient: dict[str, int] = {}
    for s in studies:
        per_patient[s.patient.patient_id] = per_patient.get(s.patient.patient_id, 0) + 1
    pid = min(per_patient, key=lambda p: (abs(per_patient[p] - 3), p))
    kinds = [
        QueryKind("patient_id", f"PatientID={pid}", {"PatientID": pid}),
        QueryKind("name_prefix", f"PatientName={args.name_prefix}", {"PatientName": args.name_prefix}),
        QueryKind("date_range", f"StudyDate={args.date_range}", {"StudyDate": args.date_range}),
        QueryKind("universal", "universal (no matching key)", {}),
    ]
    if args.accent_prefix:
        kinds.append(
            QueryKind("name_accent", f"PatientName={args.accent_prefix}", {"PatientName": args.accent_prefix}, accent=True)
        )
    return [k for k in kinds if k.name in args.kinds]


def identifier(kind: QueryKind) -> Any:
    """The C-FIND identifier: STUDY level, UTF-8, the matching keys and empty return keys."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, None)
    for keyword, value in kind.keys.items():
        setattr(ds, keyword, value)
    return ds


# ------------------------------------------------------------------ the C-FIND client


@dataclass
class Answer:
    """The result of one C-FIND: wall seconds, matches, final status and (if kept) the studies."""

    seconds: float
    matches: int
    status: int | None
    studies: dict[str, dict[str, Any]] | None = None


class FindClient:
    """One pynetdicom association for Study Root FIND, with TCP_NODELAY on its socket.

    TCP_NODELAY is set when the connection opens (EVT_CONN_OPEN), before anything is sent:
    pynetdicom sends a C-FIND request's command set and identifier as separate P-DATA PDUs,
    and with Nagle's algorithm the second one waits for the peer's (delayed) ACK of the first.
    """

    def __init__(self, port: int, called_aet: str, *, timeout: float = 600.0) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

        self.model = StudyRootQueryRetrieveInformationModelFind
        self.ae = AE(ae_title=CLIENT_AET)
        self.ae.add_requested_context(self.model)
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout
        self.nodelay = False

        def on_open(event: Any) -> None:
            sock = event.assoc.dul.socket.socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        self.assoc = self.ae.associate(
            LOOPBACK, port, ae_title=called_aet, evt_handlers=[(evt.EVT_CONN_OPEN, on_open)]
        )
        if not self.assoc.is_established:
            how = "rejected" if self.assoc.is_rejected else "aborted" if self.assoc.is_aborted else "not established"
            raise BenchError(
                f"association with {called_aet} on port {port} {how} (proposed: Study Root Query/Retrieve - FIND only)"
            )
        accepted = [cx for cx in self.assoc.accepted_contexts if cx.abstract_syntax == self.model]
        if not accepted:
            self.assoc.abort()
            raise BenchError(f"{called_aet} did not accept Study Root Query/Retrieve - FIND")
        # pynetdicom's default DUL idle poll (1 ms), for both targets.
        self.dul_delay = float(self.assoc.dul._run_loop_delay)

    def _pause_reactor(self, timeout: float = 10.0) -> None:
        """Make sure the association's reactor thread is blocked before the next request.

        pynetdicom 3.0.4's requestor race: the last response of a C-FIND releases the reactor
        (``_reactor_checkpoint.set()``); ``send_c_find`` then clears the checkpoint and waits
        for ``_is_paused``, but that flag is still True from before the wake-up, so the request
        goes out while the reactor runs one more loop, in which it takes the first response of
        the new query off the DIMSE queue as if it were a request (and drops it). Here that
        lost a pending response in about 1 of 500 queries to Orthanc. Waiting, untimed, until
        the reactor really waits on the checkpoint again closes the window.
        """
        checkpoint = self.assoc._reactor_checkpoint
        checkpoint.clear()
        deadline = time.monotonic() + timeout
        while not checkpoint._cond._waiters:  # type: ignore[attr-defined]
            if not self.assoc.is_established or time.monotonic() > deadline:
                raise BenchError("the association's reactor did not pause (association lost?)")
            time.sleep(0.0001)

    def find(self, ds: Any, *, keep: bool = False) -> Answer:
        """Send one C-FIND and read every response; time until the final one has arrived."""
        studies: dict[str, dict[str, Any]] | None = {} if keep else None
        matches = 0
        final: int | None = None
        self._pause_reactor()
        t0 = time.perf_counter()
        for status, ident in self.assoc.send_c_find(ds, self.model):
            if not status or "Status" not in status:
                raise BenchError("C-FIND: no response (timeout, abort or invalid response)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                matches += 1
                if studies is not None and ident is not None:
                    studies[str(ident.get("StudyInstanceUID", ""))] = _summary(ident)
            else:
                final = code
        seconds = time.perf_counter() - t0
        if not self.assoc.is_established:
            raise BenchError("the association was aborted during the C-FIND")
        return Answer(seconds, matches, final, studies)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()

    def __enter__(self) -> FindClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary(ident: Any) -> dict[str, Any]:
    """The returned values we compare with the ground truth."""

    def text(keyword: str) -> str:
        value = ident.get(keyword)
        return "" if value is None else unicodedata.normalize("NFC", str(value))

    modalities = ident.get("ModalitiesInStudy")
    if modalities is None:
        mods: list[str] = []
    elif isinstance(modalities, str):
        mods = [m for m in modalities.split("\\") if m]
    else:
        mods = [str(m) for m in modalities if m]
    count = ident.get("NumberOfStudyRelatedInstances")
    return {
        "PatientName": text("PatientName"),
        "PatientID": text("PatientID"),
        "StudyDate": text("StudyDate"),
        "AccessionNumber": text("AccessionNumber"),
        "StudyDescription": text("StudyDescription"),
        "ModalitiesInStudy": sorted(mods),
        "NumberOfStudyRelatedInstances": int(count) if count not in (None, "") else None,
    }


# ------------------------------------------------------------------------ measuring


@dataclass
class KindResult:
    """One query kind against one target."""

    target: str
    part: str
    kind: str
    label: str
    accent: bool
    repeat: int
    matches: int
    expected: int
    status: str
    seconds: list[float]
    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    problems: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def check_answer(
    kind: QueryKind, answer: Answer, truth: set[str], by_uid: dict[str, StudyPlan], *, values: bool
) -> list[str]:
    """Differences between an answer and the ground truth (studies, and returned values)."""
    problems: list[str] = []
    if answer.status != 0x0000:
        problems.append(f"final status 0x{answer.status:04X}" if answer.status is not None else "no final status")
    got = set(answer.studies or {})
    if answer.matches != len(got):
        problems.append(f"{answer.matches} responses for {len(got)} distinct StudyInstanceUIDs")
    missing, extra = truth - got, got - truth
    if missing:
        problems.append(f"{len(missing)} expected studies missing, e.g. {_examples(missing, by_uid)}")
    if extra:
        problems.append(f"{len(extra)} unexpected studies, e.g. {_examples(extra, by_uid)}")
    if values and answer.studies:
        wrong: dict[str, list[str]] = {}
        for uid, got_values in answer.studies.items():
            plan = by_uid.get(uid)
            if plan is None:
                continue
            want = {
                "PatientName": plan.patient.name,
                "PatientID": plan.patient.patient_id,
                "StudyDate": plan.date,
                "AccessionNumber": plan.accession,
                "StudyDescription": plan.description,
                "ModalitiesInStudy": plan.modalities,
                "NumberOfStudyRelatedInstances": plan.n_instances,
            }
            for key, value in want.items():
                if got_values.get(key) != value:
                    wrong.setdefault(key, []).append(f"{got_values.get(key)!r} instead of {value!r}")
        for key, items in sorted(wrong.items()):
            problems.append(f"{key} wrong in {len(items)} responses, e.g. {items[0]}")
    return problems


def _examples(uids: set[str], by_uid: dict[str, StudyPlan], n: int = 3) -> str:
    out = []
    for uid in sorted(uids)[:n]:
        plan = by_uid.get(uid)
        out.append(f"{plan.patient.patient_id} {plan.patient.name} {plan.date}" if plan else uid)
    return "; ".join(out)


def measure(
    target: str,
    part: str,
    port: int,
    called_aet: str,
    kinds: Sequence[QueryKind],
    studies: Sequence[StudyPlan],
    repeat: int,
    warmup: int,
    *,
    log: Callable[[str], None],
) -> tuple[list[KindResult], dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """Run every kind ``warmup`` + ``repeat`` times in ONE association; check the first answer.

    Returns the per-kind results, the first answer's studies per kind (for the cross-check
    between targets) and facts about the client (TCP_NODELAY, DUL poll delay).
    """
    by_uid = {s.uid: s for s in studies}
    results: list[KindResult] = []
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    with FindClient(port, called_aet) as client:
        for kind in kinds:
            ds = identifier(kind)
            truth = ground_truth(kind, studies)
            first = client.find(ds, keep=True)  # untimed: checked against the ground truth
            answers[kind.name] = first.studies or {}
            problems = check_answer(kind, first, truth, by_uid, values=True)
            for _ in range(max(0, warmup - 1)):
                client.find(ds)
            seconds: list[float] = []
            counts: set[int] = set()
            statuses: set[int | None] = set()
            for _ in range(repeat):
                answer = client.find(ds)
                seconds.append(answer.seconds)
                counts.add(answer.matches)
                statuses.add(answer.status)
            if counts != {first.matches}:
                problems.append(f"match count varied between repetitions: {sorted(counts)}")
            if statuses != {0x0000}:
                problems.append(f"final statuses {sorted(f'0x{s:04X}' if s is not None else 'none' for s in statuses)}")
            ms = [s * 1000 for s in seconds]
            result = KindResult(
                target=target,
                part=part,
                kind=kind.name,
                label=kind.label,
                accent=kind.accent,
                repeat=repeat,
                matches=first.matches,
                expected=len(truth),
                status=f"0x{first.status:04X}" if first.status is not None else "none",
                seconds=seconds,
                p50_ms=percentile(ms, 50),
                p95_ms=percentile(ms, 95),
                mean_ms=statistics.fmean(ms),
                min_ms=min(ms),
                max_ms=max(ms),
                problems=problems,
            )
            results.append(result)
            note = f"  !!! {'; '.join(problems)}" if problems else ""
            log(
                f"  {target} {kind.name}: {result.matches} matches (expected {result.expected}), "
                f"p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms{note}"
            )
        facts = {"tcp_nodelay": client.nodelay, "dul_run_loop_delay": client.dul_delay}
    return results, answers, facts


# ------------------------------------------------------------------------ QIDO-RS


QIDO_INCLUDE = "StudyDescription"
"""Asked for on top of the default study attributes (PS3.18 Table 10.6.3-3), as a viewer's
study list does."""


@dataclass(frozen=True)
class QidoKind:
    """One QIDO-RS study search: a query kind's keys, fuzzy matching or not, a limit or not."""

    name: str
    label: str
    base: QueryKind
    fuzzy: bool
    limit: int | None

    def params(self) -> list[tuple[str, str]]:
        params = [*self.base.keys.items(), ("includefield", QIDO_INCLUDE)]
        if self.fuzzy:
            params.append(("fuzzymatching", "true"))
        if self.limit is not None:
            params.append(("limit", str(self.limit)))
        return params


def qido_kinds(kinds: Sequence[QueryKind], limit: int) -> list[QidoKind]:
    """For each query kind: the default limit (the server's maximum) and ``limit``; person-name
    kinds also with ``fuzzymatching=true`` (accent-insensitive)."""
    out: list[QidoKind] = []
    for kind in kinds:
        for fuzzy in (False, True) if "PatientName" in kind.keys else (False,):
            for lim in (None, limit):
                suffix = (" fuzzy" if fuzzy else "") + (f" limit={lim}" if lim is not None else "")
                name = kind.name + ("/fuzzy" if fuzzy else "") + (f"/limit{lim}" if lim is not None else "")
                out.append(QidoKind(name, f"{kind.label}{suffix}", kind, fuzzy, lim))
    return out


def qido_truth(kind: QidoKind, studies: Sequence[StudyPlan]) -> list[str]:
    """The StudyInstanceUIDs a QIDO search must return, in the archive's order (study rows in
    the order they were filled): person names case-insensitive, and accent-insensitive only
    with fuzzymatching."""
    truth = ground_truth(kind.base, studies) if kind.fuzzy else plain_truth(kind.base, studies)
    ordered = [s.uid for s in sorted(studies, key=lambda s: s.pk) if s.uid in truth]
    return ordered[: kind.limit] if kind.limit is not None else ordered


@dataclass
class QidoAnswer:
    seconds: float
    results: list[dict[str, Any]]
    warning: str | None
    body_bytes: int
    wire_bytes: int


class QidoClient:
    """One HTTP/1.1 client with keep-alive (httpx), signed in as the bench's admin user."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=base_url, timeout=600.0, trust_env=False)
        reply = self.http.post("/api/token", data={"username": username, "password": password})
        if reply.status_code != 200:
            raise BenchError(f"POST /api/token: {reply.status_code} {reply.text[:300]}")
        self.http.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def search(self, params: list[tuple[str, str]]) -> QidoAnswer:
        """GET /dicom-web/studies; timed until the body has arrived and been decoded."""
        t0 = time.perf_counter()
        reply = self.http.get("/dicom-web/studies", params=tuple(params))
        results = reply.json()
        seconds = time.perf_counter() - t0
        if reply.status_code != 200:
            raise BenchError(f"QIDO-RS {params}: {reply.status_code} {reply.text[:300]}")
        return QidoAnswer(seconds, results, reply.headers.get("warning"), len(reply.content), reply.num_bytes_downloaded)

    def close(self) -> None:
        self.http.close()


def _qido_summary(result: dict[str, Any]) -> dict[str, Any]:
    def first(tag: str) -> Any:
        values = result.get(tag, {}).get("Value")
        return values[0] if values else None

    name = first("00100010")
    return {
        "PatientName": unicodedata.normalize("NFC", name["Alphabetic"]) if name else "",
        "PatientID": first("00100020") or "",
        "StudyDate": first("00080020") or "",
        "AccessionNumber": first("00080050") or "",
        "StudyDescription": first("00081030") or "",
        "ModalitiesInStudy": sorted(result.get("00080061", {}).get("Value", [])),
        "NumberOfStudyRelatedInstances": first("00201208"),
    }


def check_qido(kind: QidoKind, answer: QidoAnswer, expected: list[str], more: bool, by_uid: dict[str, StudyPlan]) -> list[str]:
    """Differences between a QIDO answer and the ground truth: the studies in order, the
    Warning header when more matches exist than returned, each returned value."""
    problems: list[str] = []
    got = [r.get("0020000D", {}).get("Value", [""])[0] for r in answer.results]
    if got != expected:
        missing, extra = set(expected) - set(got), set(got) - set(expected)
        problems.append(
            f"{len(got)} studies instead of {len(expected)}"
            + (f"; {len(missing)} missing, e.g. {_examples(missing, by_uid)}" if missing else "")
            + (f"; {len(extra)} unexpected, e.g. {_examples(extra, by_uid)}" if extra else "")
            + ("; same studies in another order" if not missing and not extra else "")
        )
    warned = answer.warning is not None and "additional results" in answer.warning
    if warned != more:
        problems.append(f"Warning header {answer.warning!r} with {'more' if more else 'no more'} matches")
    wrong: dict[str, list[str]] = {}
    for result in answer.results:
        plan = by_uid.get(result.get("0020000D", {}).get("Value", [""])[0])
        if plan is None:
            continue
        values = _qido_summary(result)
        want = {
            "PatientName": plan.patient.name,
            "PatientID": plan.patient.patient_id,
            "StudyDate": plan.date,
            "AccessionNumber": plan.accession,
            "StudyDescription": plan.description,
            "ModalitiesInStudy": sorted(plan.modalities),
            "NumberOfStudyRelatedInstances": plan.n_instances,
        }
        for key, value in want.items():
            if values[key] != value:
                wrong.setdefault(key, []).append(f"{values[key]!r} instead of {value!r}")
    for key, items in sorted(wrong.items()):
        problems.append(f"{key} wrong in {len(items)} results, e.g. {items[0]}")
    return problems


def measure_qido(
    base_url: str,
    password: str,
    kinds: Sequence[QidoKind],
    studies: Sequence[StudyPlan],
    repeat: int,
    warmup: int,
    *,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run every QIDO kind ``warmup`` + ``repeat`` times on ONE keep-alive connection; check
    the first answer against the ground truth."""
    by_uid = {s.uid: s for s in studies}
    results: list[dict[str, Any]] = []
    client = QidoClient(base_url, "admin", password)
    # The planned population is a large heap of long-lived objects; without this, the
    # collector's full passes (set off by decoding big answers) land in the timings.
    gc.collect()
    gc.freeze()
    try:
        for kind in kinds:
            params = kind.params()
            everything = qido_truth(QidoKind(kind.name, kind.label, kind.base, kind.fuzzy, None), studies)
            expected = everything[: kind.limit] if kind.limit is not None else everything
            more = kind.limit is not None and len(everything) > kind.limit
            first = client.search(params)
            problems = check_qido(kind, first, expected, more, by_uid)
            for _ in range(max(0, warmup - 1)):
                client.search(params)
            seconds: list[float] = []
            counts: set[int] = set()
            for _ in range(repeat):
                answer = client.search(params)
                seconds.append(answer.seconds)
                counts.add(len(answer.results))
            if counts != {len(first.results)}:
                problems.append(f"match count varied between repetitions: {sorted(counts)}")
            ms = [x * 1000 for x in seconds]
            row = asdict(
                KindResult(
                    target="filmless",
                    part="scale-qido",
                    kind=kind.name,
                    label=kind.label,
                    accent=False,
                    repeat=repeat,
                    matches=len(first.results),
                    expected=len(expected),
                    status="200",
                    seconds=seconds,
                    p50_ms=percentile(ms, 50),
                    p95_ms=percentile(ms, 95),
                    mean_ms=statistics.fmean(ms),
                    min_ms=min(ms),
                    max_ms=max(ms),
                    problems=problems,
                )
            )
            row.update(
                params=params, all_matches=len(everything), body_bytes=first.body_bytes, wire_bytes=first.wire_bytes
            )
            results.append(row)
            note = f"  !!! {'; '.join(problems)}" if problems else ""
            log(
                f"  QIDO {kind.label}: {row['matches']} results (expected {row['expected']}), "
                f"p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms{note}"
            )
    finally:
        gc.unfreeze()
        client.close()
    return results


class ApiServer(FilmlessServer):
    """``filmless serve --components api`` (HTTP only, no DICOM port, no background workers):
    ready when ``GET /healthz`` answers 200."""

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=1.0, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise PeerError(f"filmless serve exited with {process.returncode}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError("GET /healthz did not answer 200")
                time.sleep(0.05)


def explain_qido(url: str, kinds: Sequence[QidoKind], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the SQL each QIDO kind runs on PostgreSQL, built by the
    same code as the server's (QIDO parameters -> storage.query -> SELECT, with the limit + 1
    the route asks for to know whether more matches exist)."""
    from sqlalchemy import create_engine

    from storage.query import STUDY_ROOT, build_query
    from viewer_api.dicomweb.qido import ALL_STUDIES, parse_search

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    plans: list[dict[str, Any]] = []
    try:
        with engine.connect() as conn:
            for kind in kinds:
                search = parse_search(ALL_STUDIES, kind.params())
                query = build_query(search.identifier, STUDY_ROOT, search.options())
                statement = query.select(limit=kind.limit + 1 if kind.limit is not None else None)
                compiled = statement.compile(dialect=conn.dialect)
                lines = [
                    str(r[0])
                    for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + compiled.string, dict(compiled.params))
                ]
                text_plan = "\n".join(lines)
                executed = re.search(r"Execution Time: ([0-9.]+) ms", text_plan)
                plan = {
                    "kind": kind.name,
                    "label": kind.label,
                    "sql": compiled.string,
                    "params": {k: str(v) for k, v in compiled.params.items()},
                    "plan": lines,
                    "execution_ms": float(executed.group(1)) if executed else None,
                    "uses_name_pattern_index": "ix_patient_name_folded_pattern" in text_plan,
                    "limit_in_sql": bool(lines) and lines[0].lstrip().startswith("Limit"),
                }
                plans.append(plan)
                log(
                    f"  EXPLAIN {kind.label}: {plan['execution_ms']} ms in the database; "
                    f"name pattern index {'used' if plan['uses_name_pattern_index'] else 'not used'}; "
                    f"top node {lines[0].split('(')[0].strip() if lines else '?'}"
                )
        return plans
    finally:
        engine.dispose()


# -------------------------------------------------------------- side-by-side: files


def write_study_files(studies: Sequence[StudyPlan], out_dir: Path, size: int, seed: int) -> list[Path]:
    """Write every instance of ``studies`` as a small Part 10 file (Explicit VR Little Endian)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)  # 12-bit noise
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for study in studies:
        p = study.patient
        for series in study.series:
            for n in range(1, series.instances + 1):
                ds = Dataset()
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.SOPClassUID = SOP_CLASS[series.modality]
                ds.SOPInstanceUID = f"{series.uid}.{n}"
                ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.date
                ds.StudyTime = ds.SeriesTime = study.time
                ds.ContentTime = f"{study.time}.{n:03d}"
                ds.AccessionNumber = study.accession
                ds.Modality = series.modality
                ds.Manufacturer = "filmless-synthetic"
                ds.InstitutionName = "Bệnh viện Đa khoa Tỉnh Quảng Nam"
                ds.ReferringPhysicianName = "Võ^Minh Tâm^^BS."
                ds.StudyDescription = study.description
                ds.SeriesDescription = f"{series.modality} {series.number}"
                ds.PatientName = p.name
                ds.PatientID = p.patient_id
                ds.IssuerOfPatientID = "FILMLESS-HIS"
                ds.PatientBirthDate = p.birth_date
                ds.PatientSex = p.sex
                ds.BodyPartExamined = BODY_PART[series.modality]
                ds.StudyInstanceUID = study.uid
                ds.SeriesInstanceUID = series.uid
                ds.StudyID = f"{study.pk % 100000:05d}"
                ds.SeriesNumber = series.number
                ds.InstanceNumber = n
                if series.modality == "SR":
                    _sr_content(ds)
                else:
                    _image(ds, base, n, series.modality)
                ds.file_meta = FileMetaDataset()
                ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
                path = out_dir / f"{study.pk:06d}-{series.number:02d}-{n:03d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
    return paths


def _image(ds: Any, base: Any, n: int, modality: str) -> None:
    import numpy as np

    pixels = np.roll(base, n * 3, axis=1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality in ("CT", "MR", "PT") else ""]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    if modality == "US":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        data = (pixels >> 4).astype(np.uint8).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        data = pixels.astype("<u2").tobytes()
    ds.PixelRepresentation = 0
    if modality in ("CT", "PT", "MR"):
        ds.ImagePositionPatient = ["0", "0", str(-n * 2.5)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.8", "0.8"]
        ds.FrameOfReferenceUID = f"{ds.StudyInstanceUID}.9"
    if modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    if modality in ("MG", "DX"):
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"


def _sr_content(ds: Any) -> None:
    from pydicom.dataset import Dataset

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return item

    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = [code("121071", "DCM", "Finding")]
    text.TextValue = "Không phát hiện bất thường."
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = [code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ContentSequence = [text]


# ------------------------------------------------------------------ side-by-side


def orthanc_config(extra: dict[str, Any]) -> dict[str, Any]:
    """Orthanc settings for this benchmark: our client may query, answers in UTF-8."""
    config = {
        "DicomAlwaysAllowFind": True,
        "DefaultEncoding": "Utf8",
    }
    config.update(extra)
    return config


def filmless_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of the filmless servers: the C-FIND match limit (see --filmless-max-find-matches)."""
    return {"FILMLESS_MAX_FIND_MATCHES": str(args.filmless_max_find_matches)}


def load_orthanc(orthanc: Orthanc, files_dir: Path, n_files: int, n_studies: int) -> float:
    """C-STORE the files with DCMTK storescu (one association); return the seconds."""
    t = time.perf_counter()
    run_storescu(files_dir, LOOPBACK, orthanc.dicom_port, orthanc.aet, CLIENT_AET, check=True, timeout=3600)
    seconds = time.perf_counter() - t
    stats = orthanc.statistics()
    if int(stats["CountInstances"]) != n_files or int(stats["CountStudies"]) != n_studies:
        raise BenchError(
            f"orthanc holds {stats['CountInstances']} instances / {stats['CountStudies']} studies, "
            f"expected {n_files} / {n_studies}"
        )
    return seconds


def load_filmless(data_dir: Path, files_dir: Path, n_files: int, cli: list[str]) -> float:
    """``filmless import`` the files (waits for compression); return the seconds."""
    env = peer_env()
    cwd = REPO_ROOT if cli[1:3] == ["-m", "filmless.cli"] else None
    t = time.perf_counter()
    result = subprocess.run(
        [*cli, "import", "--data", str(data_dir), str(files_dir)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        cwd=cwd,
        timeout=3600,
    )
    seconds = time.perf_counter() - t
    if result.returncode != 0:
        raise BenchError(f"filmless import exited with {result.returncode}:\n{result.stderr[-3000:]}")
    stats = subprocess.run(
        [*cli, "stats", "--data", str(data_dir), "--json"], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    got = json.loads(stats.stdout or "{}").get("instances")
    if got != n_files:
        raise BenchError(f"filmless holds {got} instances after import, expected {n_files}\n{result.stderr[-3000:]}")
    return seconds


def run_side_by_side(args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Generate, load both targets, query both; return the part's record."""
    record: dict[str, Any] = {"results": [], "errors": [], "cross_check": []}
    studies = make_population(args.studies, args.seed, instances_per_series=(1, args.max_instances))
    kinds = query_kinds(studies, args)
    files_dir = work / "files"
    t = time.perf_counter()
    files = write_study_files(studies, files_dir, args.image_size, args.seed)
    size = sum(p.stat().st_size for p in files)
    log(
        f"side by side: {len(studies)} studies, {len({s.patient.pk for s in studies})} patients, "
        f"{sum(len(s.series) for s in studies)} series, {len(files)} files ({size / 1e6:.1f} MB) "
        f"written in {time.perf_counter() - t:.1f} s"
    )
    record["population"] = _population_facts(studies)
    record["population"]["files"] = len(files)
    record["population"]["bytes"] = size
    record["kinds"] = [asdict(k) | {"expected": len(ground_truth(k, studies))} for k in kinds]
    for k in kinds:
        if not k.accent and plain_truth(k, studies) != ground_truth(k, studies):
            raise SystemExit(f"query {k.label} is not accent-neutral for this population: choose another value")
    answers: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for target in args.targets:
        try:
            if target == "orthanc":
                with Orthanc(
                    "ORTHANC",
                    workdir=work / "orthanc",
                    modalities={"bench": [CLIENT_AET, LOOPBACK, 11113]},
                    extra_config=orthanc_config(args.orthanc_config),
                    keep=args.keep,
                ) as orthanc:
                    load = load_orthanc(orthanc, files_dir, len(files), len(studies))
                    log(f"  orthanc loaded in {load:.1f} s; querying ...")
                    results, answers[target], facts = measure(
                        "orthanc", "side-by-side", orthanc.dicom_port, orthanc.aet, kinds, studies,
                        args.repeat, args.warmup, log=log,
                    )
                    facts |= {"load_seconds": load, "version": orthanc.rest("/system").get("Version")}
            else:
                server = FilmlessServer(
                    "FILMLESS", workdir=work / "filmless", extra_args=args.filmless_args,
                    command=args.filmless_cmd, keep=args.keep, env=filmless_env(args),
                )
                load = load_filmless(server.data_dir, files_dir, len(files), server.cli)
                log(f"  filmless imported in {load:.1f} s; starting serve and querying ...")
                with server:
                    results, answers[target], facts = measure(
                        "filmless", "side-by-side", server.dicom_port, server.aet, kinds, studies,
                        args.repeat, args.warmup, log=log,
                    )
                    facts |= {"load_seconds": load, "stats": dict(server.stats())}
        except (BenchError, PeerError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            tail = _log_tail(work / target)
            record["errors"].append({"target": target, "error": str(exc), "log_tail": tail})
            log(f"\n!!! side by side, {target} FAILED:\n{exc}\n--- end of its log:\n{tail}\n")
            continue
        record["results"].extend(asdict(r) for r in results)
        record[f"{target}_facts"] = facts
    if "filmless" in answers and "orthanc" in answers:
        by_uid = {s.uid: s for s in studies}
        for k in kinds:
            f_set, o_set = set(answers["filmless"].get(k.name, {})), set(answers["orthanc"].get(k.name, {}))
            entry = {
                "kind": k.name,
                "label": k.label,
                "accent": k.accent,
                "filmless": len(f_set),
                "orthanc": len(o_set),
                "same_studies": f_set == o_set,
                "only_filmless": _examples(f_set - o_set, by_uid),
                "only_orthanc": _examples(o_set - f_set, by_uid),
            }
            record["cross_check"].append(entry)
            if f_set != o_set:
                level = "(accent-dependent, informational)" if k.accent else "!!! MISMATCH"
                log(
                    f"{level} {k.label}: filmless {len(f_set)} studies, orthanc {len(o_set)}; "
                    f"only filmless: {entry['only_filmless'] or '-'}; only orthanc: {entry['only_orthanc'] or '-'}"
                )
    return record


def _log_tail(directory: Path, max_chars: int = 3000) -> str:
    """The end of a target's log (``*.log`` in its work directory), for the error record."""
    logs = sorted(directory.glob("*.log"))
    if not logs:
        return "(no log)"
    return logs[0].read_text(errors="replace")[-max_chars:]


def _population_facts(studies: Sequence[StudyPlan]) -> dict[str, Any]:
    mods: dict[str, int] = {}
    for s in studies:
        key = "\\".join(s.modalities)
        mods[key] = mods.get(key, 0) + 1
    return {
        "studies": len(studies),
        "patients": len({s.patient.pk for s in studies}),
        "series": sum(len(s.series) for s in studies),
        "instances": sum(s.n_instances for s in studies),
        "dates": [min(s.date for s in studies), max(s.date for s in studies)],
        "modalities_in_study": dict(sorted(mods.items(), key=lambda kv: -kv[1])),
    }


# ------------------------------------------------------------------------ scale: fill


def fill_index(
    data_dir: Path,
    studies: Sequence[StudyPlan],
    seed: int,
    batch: int,
    log: Callable[[str], None],
    url: str | None = None,
) -> dict[str, Any]:
    """Create a filmless index in ``data_dir`` and bulk-insert ``studies`` into it.

    The schema comes from filmless itself (``Index.create``); rows go in with SQLAlchemy Core
    ``executemany``, with explicit primary keys, in batches of ``batch`` rows, one transaction
    per batch, on a connection with ``synchronous=OFF`` and foreign-key checks off (the rows are
    consistent by construction) -- a fill, not an ingest. The derived study and series columns
    (counts, ModalitiesInStudy, SOPClassesInStudy, bytes) are filled as ingest would leave them.
    """
    from sqlalchemy import create_engine, event, insert, text

    from storage.index import Index, create_index_engine
    from storage.index.schema import instance, patient, series, study

    data_dir.mkdir(parents=True, exist_ok=True)
    sqlite = url is None
    if url is None:
        url = f"sqlite:///{(data_dir / 'index.sqlite').resolve()}"
    index = Index(create_index_engine(url))
    index.create()  # tables, indexes and the schema version, exactly as filmless makes them
    index.dispose()

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))

    if sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cur = dbapi_connection.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=OFF", "foreign_keys=OFF", "cache_size=-262144", "temp_store=MEMORY"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

    base_time = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    counts = {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    t_start = time.perf_counter()

    def put(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(insert(table), rows)

    def batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        chunk: list[dict[str, Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def received_at(study_plan: StudyPlan) -> dt.datetime:
        day = dt.datetime.strptime(study_plan.date + study_plan.time[:4], "%Y%m%d%H%M").replace(tzinfo=dt.UTC)
        return min(day, base_time)

    # patients
    seen: dict[int, PatientPlan] = {}
    for s in studies:
        seen.setdefault(s.patient.pk, s.patient)

    def patient_rows() -> Iterator[dict[str, Any]]:
        for p in seen.values():
            yield {
                "pk": p.pk,
                "patient_key": f"{p.patient_id}\\FILMLESS-HIS",
                "patient_id": p.patient_id,
                "issuer_of_patient_id": "FILMLESS-HIS",
                "patient_name": p.name,
                "patient_name_folded": fold(p.name),
                "patient_birth_date": p.birth_date,
                "patient_sex": p.sex,
                "other_patient_ids": None,
                "created_at": base_time,
                "updated_at": base_time,
            }

    def size_of(modality: str, type_name: str) -> tuple[int, int]:
        st = next(t for t in STUDY_TYPES if t.name == type_name)
        received = st.received_size[modality]
        return received, int(received / COMPRESSION_RATIO[modality])

    def study_rows() -> Iterator[dict[str, Any]]:
        for s in studies:
            at = received_at(s)
            received = stored = 0
            for se in s.series:
                r, st = size_of(se.modality, s.type_name)
                received += r * se.instances
                stored += st * se.instances
            yield {
                "pk": s.pk,
                "patient_pk": s.patient.pk,
                "study_instance_uid": s.uid,
                "study_date": s.date,
                "study_time": s.time,
                "accession_number": s.accession,
                "issuer_of_accession_number": None,
                "study_id": f"{s.pk % 100000:05d}",
                "study_description": s.description,
                "referring_physician_name": "Võ^Minh Tâm^^BS.",
                "referring_physician_name_folded": fold("Võ^Minh Tâm^^BS."),
                "admission_id": None,
                "institution_name": "Bệnh viện Đa khoa Tỉnh Quảng Nam",
                "specific_character_set": "ISO_IR 192",
                "modalities_in_study": "\\".join(s.modalities),
                "sop_classes_in_study": "\\".join(sorted({SOP_CLASS[se.modality] for se in s.series})),
                "number_of_series": len(s.series),
                "number_of_instances": s.n_instances,
                "received_bytes": received,
                "stored_bytes": stored,
                "created_at": at,
                "updated_at": at,
            }

    series_pk: dict[str, int] = {}

    def series_rows() -> Iterator[dict[str, Any]]:
        for s in studies:
            at = received_at(s)
            for se in s.series:
                pk = len(series_pk) + 1
                series_pk[se.uid] = pk
                yield {
                    "pk": pk,
                    "study_pk": s.pk,
                    "series_instance_uid": se.uid,
                    "modality": se.modality,
                    "series_number": se.number,
                    "series_description": f"{se.modality} {se.number}",
                    "body_part_examined": BODY_PART[se.modality],
                    "series_date": s.date,
                    "series_time": s.time,
                    "protocol_name": None,
                    "station_name": f"{se.modality}01",
                    "manufacturer": "filmless-synthetic",
                    "manufacturer_model_name": "Phantom",
                    "performing_physician_name": None,
                    "laterality": None,
                    "number_of_instances": se.instances,
                    "created_at": at,
                    "updated_at": at,
                }

    geometry = {"CT": (512, 512, 16, 12, 1, "MONOCHROME2"), "MR": (256, 256, 16, 12, 1, "MONOCHROME2"),
                "CR": (2048, 2048, 16, 12, 1, "MONOCHROME1"), "DX": (3000, 2500, 16, 12, 1, "MONOCHROME2"),
                "US": (480, 640, 8, 8, 3, "RGB"), "MG": (4096, 3328, 16, 12, 1, "MONOCHROME2"),
                "PT": (128, 128, 16, 16, 1, "MONOCHROME2"), "SR": (None, None, None, None, None, None)}

    def instance_rows() -> Iterator[dict[str, Any]]:
        pk = 0
        for s in studies:
            at = received_at(s)
            for se in s.series:
                r_size, s_size = size_of(se.modality, s.type_name)
                rows_, cols, bits_a, bits_s, spp, photometric = geometry[se.modality]
                image = se.modality != "SR"
                # JPEG-LS lossless once compressed; US (RGB, ratio ~1) and SR stay as received.
                compressed = image and se.modality != "US"
                stored_ts = "1.2.840.10008.1.2.4.80" if compressed else "1.2.840.10008.1.2.1"
                for n in range(1, se.instances + 1):
                    pk += 1
                    uid = f"{se.uid}.{n}"
                    digest = hashlib.sha256(f"{seed}:{pk}".encode()).hexdigest()
                    yield {
                        "pk": pk,
                        "series_pk": series_pk[se.uid],
                        "sop_instance_uid": uid,
                        "sop_class_uid": SOP_CLASS[se.modality],
                        "instance_number": n,
                        "content_date": s.date,
                        "content_time": s.time,
                        "acquisition_datetime": None,
                        "image_type": "ORIGINAL\\PRIMARY\\AXIAL" if image else None,
                        "rows": rows_,
                        "columns": cols,
                        "bits_allocated": bits_a,
                        "bits_stored": bits_s,
                        "samples_per_pixel": spp,
                        "photometric_interpretation": photometric,
                        "number_of_frames": None,
                        "specific_character_set": "ISO_IR 192",
                        "received_transfer_syntax": "1.2.840.10008.1.2.1",
                        "stored_transfer_syntax": stored_ts,
                        "received_size": r_size,
                        "received_sha256": digest,
                        "stored_size": s_size,
                        "object_key": f"{digest[:2]}/{digest[2:4]}/{digest[32:64]}",
                        "object_sha256": digest[::-1],
                        "version": 1,
                        "pending_compression": False,
                        "compression_note": None,
                        "flags": "",
                        "warnings": None,
                        "source_aet": "CT01" if se.modality == "CT" else f"{se.modality}01",
                        "source_host": "127.0.0.1",
                        "received_at": at,
                        "stored_at": at,
                    }

    with engine.connect() as conn:
        for name, table, rows in (
            ("patients", patient, patient_rows()),
            ("studies", study, study_rows()),
            ("series", series, series_rows()),
            ("instances", instance, instance_rows()),
        ):
            t = time.perf_counter()
            for chunk in batches(rows):
                with conn.begin():
                    put(conn, table, chunk)
                counts[name] += len(chunk)
                if name == "instances" and counts[name] % (batch * 10) == 0:
                    log(f"    {counts[name]:,} instances ({time.perf_counter() - t_start:.0f} s)")
            log(f"    {name}: {counts[name]:,} rows in {time.perf_counter() - t:.1f} s")
        if sqlite:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            index_bytes = _index_bytes(data_dir)
        else:
            conn.execute(text("ANALYZE"))  # fresh statistics, as autovacuum would soon give them
            index_bytes = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        conn.commit()
    engine.dispose()
    seconds = time.perf_counter() - t_start
    return {"seconds": seconds, "rows": counts, "index_bytes": index_bytes, "batch": batch}


def _index_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("index.sqlite*") if p.is_file())


def run_scale(args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Fill a fresh filmless index, start ``filmless serve`` on it, query it."""
    record: dict[str, Any] = {"results": [], "errors": []}
    t = time.perf_counter()
    studies = make_population(args.scale_studies, args.seed, total_instances=args.scale_instances)
    plan_seconds = time.perf_counter() - t
    kinds = query_kinds(studies, args)
    record["population"] = _population_facts(studies)
    record["kinds"] = [asdict(k) | {"expected": len(ground_truth(k, studies))} for k in kinds]
    for k in kinds:
        if not k.accent and plain_truth(k, studies) != ground_truth(k, studies):
            raise SystemExit(f"query {k.label} is not accent-neutral for this population: choose another value")
    log(
        f"scale: {len(studies):,} studies, {record['population']['patients']:,} patients, "
        f"{record['population']['series']:,} series, {record['population']['instances']:,} instances "
        f"(planned in {plan_seconds:.1f} s); filling the index ..."
    )
    if "filmless" not in args.targets:
        log("  (filmless not among --targets: scale part skipped)")
        return record
    pg = None
    env = filmless_env(args)
    admin_password = secrets.token_urlsafe(18)
    env["FILMLESS_INITIAL_ADMIN_PASSWORD"] = admin_password  # QIDO-RS signs in as this admin
    env["FILMLESS_ACCESS_TOKEN_MINUTES"] = str(24 * 60)
    qkinds = qido_kinds(kinds, args.qido_limit) if "qido" in args.scale_protocols else []
    record["qido_kinds"] = [
        {"name": k.name, "label": k.label, "params": k.params(), "expected": len(qido_truth(k, studies))} for k in qkinds
    ]
    if args.scale_index == "postgresql":
        from tests.postgres import PostgresServer

        pg = PostgresServer(durable=True, keep=args.keep)
        pg.start()
        env["FILMLESS_INDEX"] = pg.create_database("bench_scale")
        record["index_backend"] = "postgresql"
    else:
        record["index_backend"] = "sqlite"
    server = FilmlessServer(
        "FILMLESS", workdir=work / "scale", extra_args=args.filmless_args, command=args.filmless_cmd,
        keep=args.keep, startup_timeout=600, env=env,
    )
    try:
        fill = fill_index(server.data_dir, studies, args.seed, args.scale_batch, log, url=env.get("FILMLESS_INDEX"))
        fill["plan_seconds"] = plan_seconds
        record["fill"] = fill
        log(f"  filled in {fill['seconds']:.0f} s; index {fill['index_bytes'] / 1e6:.1f} MB; starting serve ...")
        t = time.perf_counter()
        with server:
            record["serve_start_seconds"] = time.perf_counter() - t
            results: list[KindResult] = []
            if "c-find" in args.scale_protocols:
                results, _answers, facts = measure(
                    "filmless", "scale", server.dicom_port, server.aet, kinds, studies,
                    args.scale_repeat, args.warmup, log=log,
                )
                record["filmless_facts"] = facts
        if qkinds:
            # QIDO-RS on an API-only server of the same index: the full server's background
            # workers (compression, DICOMweb metadata) would churn through the filled index's
            # instances, whose objects do not exist, and compete for the CPUs.
            api = ApiServer(
                "FILMLESS", data_dir=server.data_dir, workdir=work / "scale-api",
                extra_args=[*args.filmless_args, "--components", "api", "--http-host", LOOPBACK],
                command=args.filmless_cmd, keep=args.keep, startup_timeout=600, env=env,
            )
            with api:
                record["qido_results"] = measure_qido(
                    api.base_url, admin_password, qkinds, studies, args.scale_repeat, args.warmup, log=log
                )
        if pg is not None and qkinds:
            record["qido_explain"] = explain_qido(env["FILMLESS_INDEX"], qkinds, log)
        if pg is None:
            record["index_bytes_after"] = _index_bytes(server.data_dir)
        record["results"].extend(asdict(r) for r in results)
    except (BenchError, PeerError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        tail = _log_tail(work / "scale")
        record["errors"].append({"target": "filmless", "error": str(exc), "log_tail": tail})
        log(f"\n!!! scale, filmless FAILED:\n{exc}\n--- end of its log:\n{tail}\n")
    finally:
        if pg is not None:
            pg.stop()
            pg.cleanup()
    return record


# --------------------------------------------------------------------------- output


def markdown_side(record: dict[str, Any]) -> str:
    rows = record.get("results", [])
    if not rows:
        return "(no side-by-side results)"
    by = {(r["target"], r["kind"]): r for r in rows}
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    lines = [
        "| query | target | matches | p50 ms | p95 ms | mean ms | filmless/Orthanc p50 | p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        f, o = by.get(("filmless", kind)), by.get(("orthanc", kind))
        for r in (x for x in (f, o) if x is not None):
            ratio50 = ratio95 = ""
            if f is not None and r is f and o is not None:
                ratio50 = f"{f['p50_ms'] / o['p50_ms']:.2f}"
                ratio95 = f"{f['p95_ms'] / o['p95_ms']:.2f}"
            flag = " !!" if r["problems"] and not r["accent"] else ""
            lines.append(
                f"| {r['label']} | {r['target']} | {r['matches']}{flag} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
                f"| {r['mean_ms']:.2f} | {ratio50} | {ratio95} |"
            )
    return "\n".join(lines)


def markdown_scale(record: dict[str, Any]) -> str:
    rows = record.get("results", [])
    if not rows:
        return "(no scale results)"
    lines = [
        "| query | matches | expected | p50 ms | p95 ms | mean ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = " !!" if r["problems"] and not r["accent"] else ""
        lines.append(
            f"| {r['label']} | {r['matches']}{flag} | {r['expected']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
            f"| {r['mean_ms']:.2f} | {r['max_ms']:.2f} |"
        )
    fill = record.get("fill")
    if fill:
        pop = record["population"]
        lines.append("")
        lines.append(
            f"index: {pop['studies']:,} studies, {pop['patients']:,} patients, {pop['series']:,} series, "
            f"{pop['instances']:,} instances; {fill['index_bytes'] / 1e6:.1f} MB on disk "
            f"({'PostgreSQL database' if record.get('index_backend') == 'postgresql' else 'index.sqlite*'}); "
            f"generated in {fill['seconds']:.0f} s; filmless serve ready in {record.get('serve_start_seconds', 0):.1f} s"
        )
    return "\n".join(lines)


def markdown_qido(record: dict[str, Any]) -> str:
    rows = record.get("qido_results", [])
    if not rows:
        return ""
    lines = [
        "| QIDO-RS study search | results | of matches | p50 ms | p95 ms | mean ms | max ms | JSON KB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = " !!" if r["problems"] else ""
        lines.append(
            f"| {r['label']} | {r['matches']}{flag} | {r['all_matches']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
            f"| {r['mean_ms']:.2f} | {r['max_ms']:.2f} | {r['body_bytes'] / 1000:.0f} |"
        )
    plans = record.get("qido_explain", [])
    if plans:
        lines.append("")
        lines.append("| EXPLAIN ANALYZE | database ms | name pattern index | LIMIT in SQL |")
        lines.append("|---|---:|---|---|")
        for p in plans:
            lines.append(
                f"| {p['label']} | {p['execution_ms']} | {'yes' if p['uses_name_pattern_index'] else 'no'} "
                f"| {'yes' if p['limit_in_sql'] else 'no'} |"
            )
    return "\n".join(lines)


def _run(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip() or None


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import pydicom
    import pynetdicom
    import sqlalchemy

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "orthanc": (_run([str(ORTHANC), "--version"]) or "").splitlines()[0] if "orthanc" in args.targets else None,
        "git_head": _run(["git", "rev-parse", "HEAD"]),
        "git_dirty_files": (_run(["git", "status", "--porcelain", "--untracked-files=no"]) or "").splitlines(),
        "filmless_command": args.filmless_cmd or filmless_command(),
        "filmless_args": args.filmless_args,
        "filmless_env": filmless_env(args),
        "orthanc_config": orthanc_config(args.orthanc_config),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: side-by-side,scale (default both)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: filmless,orthanc (default both)")
    parser.add_argument("--kinds", default="patient_id,name_prefix,date_range,universal,name_accent",
                        help="query kinds to run (default all five)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--studies", type=int, default=200, help="side by side: studies (default 200)")
    parser.add_argument("--max-instances", type=int, default=4, help="side by side: 1..N instances a series (default 4)")
    parser.add_argument("--image-size", type=int, default=64, help="side by side: rows and columns (default 64)")
    parser.add_argument("--repeat", type=int, default=200, help="side by side: timed queries per kind (default 200)")
    parser.add_argument("--scale-studies", type=int, default=10_000, help="scale: studies (default 10000)")
    parser.add_argument("--scale-instances", type=int, default=1_000_000, help="scale: instances (default 1000000)")
    parser.add_argument("--scale-repeat", type=int, default=20, help="scale: timed queries per kind (default 20)")
    parser.add_argument(
        "--scale-index",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="scale: the index backend (postgresql: a private server from Debian's packages, tests/postgres.py)",
    )
    parser.add_argument("--scale-batch", type=int, default=20_000, help="scale: rows per executemany (default 20000)")
    parser.add_argument(
        "--scale-protocols",
        default="c-find,qido",
        help="scale: comma-separated c-find,qido (default both); QIDO-RS runs over HTTP against the same "
        "filmless serve, signed in as an admin made at start-up",
    )
    parser.add_argument("--qido-limit", type=int, default=100, help="QIDO-RS: the limit of the limited searches (default 100)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed queries per kind before timing, at least 1: the first is checked "
                        "against the ground truth (default 3)")
    parser.add_argument("--name-prefix", default="Phan*", help="PatientName prefix query, ASCII (default Phan*)")
    parser.add_argument("--accent-prefix", default="Trần*", help="PatientName prefix with diacritics (default Trần*)")
    parser.add_argument("--date-range", default="20200101-20201231", help="StudyDate range (default 2020)")
    parser.add_argument(
        "--filmless-max-find-matches",
        type=int,
        default=0,
        help="FILMLESS_MAX_FIND_MATCHES for the filmless servers (default 0: no limit, as Orthanc's "
        "LimitFindResults 0; filmless's own default cuts answers at 5000 with status A700)",
    )
    parser.add_argument("--filmless-args", default="", help='extra arguments for "filmless serve", one string')
    parser.add_argument("--filmless-cmd", default=None, help="command prefix that runs the filmless CLI")
    parser.add_argument("--orthanc-config", default="{}",
                        help='JSON merged into the Orthanc configuration, e.g. \'{"StorageAccessOnFind": "Never"}\'')
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default bench/results/query-<ts>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and the targets' directories")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.scale_protocols = [p.strip() for p in args.scale_protocols.split(",") if p.strip()]
    if not args.scale_protocols or any(p not in ("c-find", "qido") for p in args.scale_protocols):
        parser.error("--scale-protocols: choose from c-find,qido")
    if args.qido_limit < 1:
        parser.error("--qido-limit must be positive")
    if not args.parts or any(p not in PARTS for p in args.parts):
        parser.error(f"--parts: choose from {','.join(PARTS)}")
    if not args.targets or any(t not in TARGETS for t in args.targets):
        parser.error(f"--targets: choose from {','.join(TARGETS)}")
    known = {"patient_id", "name_prefix", "date_range", "universal", "name_accent"}
    if not args.kinds or any(k not in known for k in args.kinds):
        parser.error(f"--kinds: choose from {','.join(sorted(known))}")
    if min(args.studies, args.repeat, args.scale_studies, args.scale_repeat, args.max_instances, args.image_size) < 1:
        parser.error("sizes and repeats must be positive")
    if args.scale_instances < args.scale_studies:
        parser.error("--scale-instances must be at least --scale-studies")
    try:
        args.orthanc_config = json.loads(args.orthanc_config)
    except json.JSONDecodeError as exc:
        parser.error(f"--orthanc-config is not JSON: {exc}")
    args.filmless_args = shlex.split(args.filmless_args)
    args.filmless_cmd = shlex.split(args.filmless_cmd) if args.filmless_cmd else None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y%m%dT%H%M%S")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-query-"))
    record: dict[str, Any] = {
        "benchmark": "query",
        "timestamp": started,
        "command": " ".join(shlex.quote(a) for a in (sys.argv if argv is None else ["-m", "bench.query", *argv])),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "return_keys": list(RETURN_KEYS),
        "environment": environment(args),
    }
    failed = False
    try:
        if "side-by-side" in args.parts:
            record["side_by_side"] = run_side_by_side(args, work, log)
        if "scale" in args.parts:
            record["scale"] = run_scale(args, work, log)
    except BaseException:
        log(f"(kept {work})")
        args.keep = True
        raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif work.exists():
            log(f"(kept {work})")

    out: list[str] = []
    discrepancies: list[str] = []
    for part, title in (("side_by_side", "Side by side"), ("scale", "Scale (filmless only)")):
        if part not in record:
            continue
        part_record = record[part]
        out.append(f"### {title}\n")
        out.append(markdown_side(part_record) if part == "side_by_side" else markdown_scale(part_record))
        out.append("")
        if part == "scale" and part_record.get("qido_results"):
            out.append(markdown_qido(part_record))
            out.append("")
        for r in part_record.get("results", []) + part_record.get("qido_results", []):
            if r["problems"]:
                tag = "accent-dependent" if r["accent"] else "DISCREPANCY"
                discrepancies.append(f"{tag}: {part}, {r['target']}, {r['label']}: {'; '.join(r['problems'])}")
                failed = failed or not r["accent"]
        for c in part_record.get("cross_check", []):
            if not c["same_studies"]:
                tag = "accent-dependent" if c["accent"] else "DISCREPANCY"
                discrepancies.append(
                    f"{tag}: filmless and Orthanc differ for {c['label']}: filmless {c['filmless']}, "
                    f"orthanc {c['orthanc']} (only filmless: {c['only_filmless'] or '-'}; "
                    f"only orthanc: {c['only_orthanc'] or '-'})"
                )
                failed = failed or not c["accent"]
        for e in part_record.get("errors", []):
            discrepancies.append(f"FAILED: {part}, {e['target']}: {e['error'][:500]}")
            failed = True
    what = (
        f"per-query wall time from send_c_find to the final response, one association per target; "
        f"{args.repeat} runs a kind side by side, {args.scale_repeat} at scale, after {args.warmup} untimed"
    )
    out.append(what)
    if discrepancies:
        out.append("\n" + "\n".join(f"- {d}" for d in discrepancies))
    print("\n".join(out))
    record["discrepancies"] = discrepancies
    output: Path = args.output or RESULTS_DIR / f"query-{started}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    log(f"\nresults: {output}")
    if failed:
        log("FAILED: see the discrepancies above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
