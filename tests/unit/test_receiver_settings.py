"""How many processes receive DICOM: one per CPU, at most two, unless set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from filmless.settings import Settings


@pytest.fixture(autouse=True)
def _no_filmless_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FILMLESS_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 2), (16, 2), (None, 1)])
def test_by_default_one_receiver_per_cpu_at_most_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int | None, expected: int
) -> None:
    monkeypatch.setattr("filmless.settings.os.cpu_count", lambda: cpus)
    settings = Settings(data=tmp_path)
    assert settings.dicom_processes == 0 and settings.receiver_processes == expected


def test_a_set_number_is_kept_and_a_system_picked_port_gets_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("filmless.settings.os.cpu_count", lambda: 8)
    assert Settings(data=tmp_path, dicom_processes=1).receiver_processes == 1
    assert Settings(data=tmp_path, dicom_processes=3).receiver_processes == 3
    # Port 0: each process would get a port of its own, so the default is one process.
    assert Settings(data=tmp_path, dicom_port=0).receiver_processes == 1
