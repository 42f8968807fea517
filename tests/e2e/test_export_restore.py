"""`filmless export` and `filmless restore` as real processes: an archive exported to a folder,
exported again (nothing copied), restored into a new data directory that `filmless verify`
finds clean and `filmless stats` finds identical; a restore into a non-empty archive fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.support import IndexView, Synthetic, assert_verify_ok, run_cli, stats

pytestmark = pytest.mark.e2e


def _row(output: str, label: str) -> int:
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃| ").split("│")]
        if len(cells) == 2 and cells[0] == label:
            return int(cells[1].replace(",", ""))
    raise AssertionError(f"no {label!r} row in:\n{output}")


def test_export_restore_verify(tmp_path: Path, synthetic_data: Synthetic) -> None:
    source, target, dest = tmp_path / "source", tmp_path / "restored", tmp_path / "export folder"
    files = synthetic_data.ct(900, slices=4, size=64) + synthetic_data.dx(901)
    result = run_cli("import", "--data", str(source), *(str(p) for p in files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert run_cli("ae", "add", "CT01", "127.0.0.1", "11112", "--data", str(source)).returncode == 0

    result = run_cli("export", str(dest), "--data", str(source))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _row(result.stdout, "objects copied") == len(files)
    assert "export complete" in result.stdout
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["counts"]["instance"] == len(files) and manifest["counts"]["application_entity"] == 1

    again = run_cli("export", str(dest), "--data", str(source))
    assert again.returncode == 0, again.stdout + again.stderr
    assert _row(again.stdout, "objects copied") == 0
    assert _row(again.stdout, "objects already there") == len(files)

    result = run_cli("restore", str(dest), "--data", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restore complete" in result.stdout
    assert_verify_ok(target)
    before, after = stats(source), stats(target)
    for key in ("patients", "studies", "series", "instances", "received_bytes", "stored_bytes"):
        assert before[key] == after[key], key
    assert IndexView(target).instances() == IndexView(source).instances()
    listed = run_cli("ae", "list", "--json", "--data", str(target))
    assert [a["ae_title"] for a in json.loads(listed.stdout)] == ["CT01"]
    # The first export is in the audit log of the source, and so of the second export.
    events = IndexView(source).query("SELECT action, outcome FROM audit_event WHERE action = 'EXPORT'")
    assert events == [("EXPORT", "success"), ("EXPORT", "success")]

    refused = run_cli("restore", str(dest), "--data", str(target))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    missing = run_cli("restore", str(tmp_path / "nothing here"), "--data", str(tmp_path / "other"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    (dest / "manifest.json").unlink()  # as an interrupted export leaves it
    incomplete = run_cli("restore", str(dest), "--data", str(tmp_path / "other"))
    assert incomplete.returncode == 1 and "no manifest" in incomplete.stderr


def test_replication_run_and_status(tmp_path: Path, synthetic_data: Synthetic) -> None:
    source, replica, restored = tmp_path / "source", tmp_path / "site b", tmp_path / "restored"
    files = synthetic_data.ct(910, slices=3, size=64)
    assert run_cli("import", "--data", str(source), *(str(p) for p in files)).returncode == 0

    status = run_cli("replication", "status", "--json", "--data", str(source))
    assert status.returncode == 0 and json.loads(status.stdout) == []
    result = run_cli("replication", "run", str(replica), "--once", "--data", str(source))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(files)} copied" in result.stdout and "snapshot written" in result.stdout
    status = run_cli("replication", "status", "--json", "--data", str(source))
    assert status.returncode == 0, status.stderr
    (state,) = json.loads(status.stdout)
    assert state["target"] == str(replica.resolve())
    assert state["replicated"] == len(files) and state["pending"] == 0 and state["in_sync"]
    table = run_cli("replication", "status", "--data", str(source))
    assert table.returncode == 0 and "replicated objects" in table.stdout and "in sync" in table.stdout

    result = run_cli("restore", str(replica), "--data", str(restored))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_verify_ok(restored)
    assert IndexView(restored).instances() == IndexView(source).instances()
