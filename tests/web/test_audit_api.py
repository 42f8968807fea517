"""The audit log: GET /api/audit (filters, keyset pages, reading it is itself audited),
`filmless audit export` (JSON lines and CSV, streamed), and the database refusing to change or
remove an event (migration 0003's triggers), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import DBAPIError

from filmless import cli
from storage.index import audit_log
from storage.index.schema import audit_event
from tests.web.conftest import WebArchive

STUDY = "1.2.826.0.1.3680043.8.498.1001"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1002"


def _page(web: WebArchive, **params: Any) -> dict[str, Any]:
    reply = web.client("admin").get("/api/audit", params=params)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _record_many(web: WebArchive, count: int, action: str = "test.event", **kwargs: Any) -> None:
    events = [
        {
            "at": datetime.now(UTC),
            "action": action,
            "outcome": "success",
            "actor": kwargs.get("actor", "CT1"),
            "actor_host": kwargs.get("host", "10.0.0.21"),
            "study_instance_uid": kwargs.get("study"),
            "series_instance_uid": None,
            "sop_instance_uid": None,
            "detail": json.dumps({"n": n}),
        }
        for n in range(count)
    ]
    with web.archive.index.write() as conn:
        conn.execute(insert(audit_event), events)


def test_events_of_both_front_doors_with_their_fields(web: WebArchive) -> None:
    # As the DICOM side writes them (Index.record_audit), and as the web side does.
    web.archive.index.record_audit(
        "dimse.store", "success", actor="CT1", actor_host="10.0.0.21", study_instance_uid=STUDY,
        series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5", detail={"bytes": 1234},
    )
    web.archive.index.record_audit("dimse.find", "failure", actor="CT1", actor_host="10.0.0.21", study_instance_uid=OTHER_STUDY)
    body = _page(web, study=STUDY)
    [event] = body["events"]
    assert body["next"] is None
    assert event["action"] == "dimse.store" and event["outcome"] == "success"
    assert event["actor"] == "CT1" and event["actor_host"] == "10.0.0.21"
    assert (event["study_instance_uid"], event["series_instance_uid"], event["sop_instance_uid"]) == (STUDY, "1.2.3.4", "1.2.3.4.5")
    assert event["detail"] == {"bytes": 1234}
    at = datetime.fromisoformat(event["at"])
    assert at.tzinfo is not None and abs(datetime.now(UTC) - at) < timedelta(minutes=1)

    # The sign-ins of the fixture are there, newest first.
    logins = _page(web, action="http.login", outcome="success")["events"]
    assert {e["actor"] for e in logins} >= {"admin1", "radiologist1", "integration1"}
    assert [e["id"] for e in logins] == sorted((e["id"] for e in logins), reverse=True)
    assert {e["actor_host"] for e in logins} == {"testclient"}


def test_filters(web: WebArchive) -> None:
    _record_many(web, 3, action="dimse.store", actor="CT1", host="10.0.0.21", study=STUDY)
    _record_many(web, 2, action="dimse.move", actor="WS1", host="10.0.0.30", study=OTHER_STUDY)
    assert len(_page(web, actor="CT1")["events"]) == 3
    assert len(_page(web, host="10.0.0.30")["events"]) == 2
    assert len(_page(web, action="dimse.*")["events"]) == 5
    assert len(_page(web, action="dimse.store", study=OTHER_STUDY)["events"]) == 0
    assert len(_page(web, outcome="failure")["events"]) == 0
    # Times: since inclusive, until exclusive, dates and offsets understood.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert len(_page(web, action="dimse.*", since="2000-01-01", until=tomorrow)["events"]) == 5
    assert _page(web, action="dimse.*", since=tomorrow)["events"] == []
    hanoi = (datetime.now(UTC) + timedelta(hours=7, minutes=5)).replace(tzinfo=None).isoformat() + "+07:00"
    assert len(_page(web, action="dimse.*", until=hanoi)["events"]) == 5
    assert _page(web, action="dimse.*", until="2000-01-01T00:00:00Z")["events"] == []
    # A literal % or _ in an action prefix is not a wildcard.
    assert _page(web, action="dimse_*")["events"] == [] and _page(web, action="%*")["events"] == []


def test_keyset_pages_cover_everything_once(web: WebArchive) -> None:
    _record_many(web, 25)
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        params: dict[str, Any] = {"action": "test.event", "limit": 10}
        if before is not None:
            params["before"] = before
        body = _page(web, **params)
        pages += 1
        seen += [e["id"] for e in body["events"]]
        before = body["next"]
        if before is None:
            break
    assert pages == 3 and len(seen) == 25 and len(set(seen)) == 25
    assert seen == sorted(seen, reverse=True)
    assert [e["detail"]["n"] for e in _page(web, action="test.event", limit=1)["events"]] == [24]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"before": 0}, {"before": "x"}, {"since": "yesterday"}, {"until": "2025-13-01"}],
)
def test_bad_parameters_are_400_problems(web: WebArchive, params: dict[str, Any]) -> None:
    reply = web.client("admin").get("/api/audit", params=params)
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")


def test_reading_the_log_is_audited_and_needs_the_audit_permission(web: WebArchive) -> None:
    _page(web, study=STUDY, limit=5)
    [read] = _page(web, action="audit.read", limit=1)["events"]
    assert read["actor"] == "admin1" and read["study_instance_uid"] == STUDY
    assert read["detail"]["filter"] == {"study": STUDY} and read["detail"]["limit"] == 5
    for role in ("radiologist", "clinician", "technologist", "integration"):
        assert web.client(role).get("/api/audit").status_code == 403
    assert web.anonymous.get("/api/audit").status_code == 401


def test_the_database_refuses_to_change_or_remove_an_event(web: WebArchive) -> None:
    web.archive.index.record_audit("dimse.store", "success", actor="CT1", study_instance_uid=STUDY)
    engine = web.archive.index.engine
    with engine.connect() as conn:
        pk, actor = conn.execute(select(audit_event.c.pk, audit_event.c.actor).where(audit_event.c.actor == "CT1")).one()
    for statement in (
        update(audit_event).where(audit_event.c.pk == pk).values(actor="someone else"),
        update(audit_event).values(outcome="success"),
        delete(audit_event).where(audit_event.c.pk == pk),
        delete(audit_event),
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(statement)
    with engine.connect() as conn:
        assert conn.execute(select(audit_event.c.actor).where(audit_event.c.pk == pk)).scalar_one() == actor
    assert len(_page(web, actor="CT1")["events"]) == 1
    # Appending still works.
    web.archive.index.record_audit("dimse.store", "success", actor="CT1")
    assert len(_page(web, actor="CT1")["events"]) == 2


# --- filmless audit export ---------------------------------------------------------------------
def _cli_args(web: WebArchive) -> list[str]:
    settings = web.archive.settings
    args = ["--data", str(settings.data)]
    if settings.index is not None:
        args += ["--index", settings.index]
    return args


def _export(web: WebArchive, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(["audit", "export", *args, *_cli_args(web)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_export_streams_every_matching_event_oldest_first(
    web: WebArchive, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _record_many(web, 2500, action="dimse.store", study=STUDY)
    _record_many(web, 3, action="dimse.move", study=OTHER_STUDY)
    batches: list[int] = []
    real_stream = audit_log.stream

    def counting_stream(index: Any, flt: Any, *, batch: int = 1000) -> Any:
        batches.append(batch)
        return real_stream(index, flt, batch=batch)

    monkeypatch.setattr(audit_log, "stream", counting_stream)
    status, out, _err = _export(web, capsys, "--study", STUDY)
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2500 and batches == [1000]
    assert [e["detail"]["n"] for e in lines] == list(range(2500))
    assert all(e["study_instance_uid"] == STUDY for e in lines)
    # The export is itself on record, after what it exported.
    web.flush_audit()
    [exported] = _page(web, action="audit.export")["events"]
    assert exported["actor_host"] == "cli" and exported["detail"]["events"] == 2500
    assert exported["detail"]["filter"] == {"study": STUDY}


def test_export_csv_to_a_file_with_filters(web: WebArchive, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _record_many(web, 4, action="dimse.move", actor="WS1", study=OTHER_STUDY)
    web.archive.index.record_audit("dimse.move", "failure", actor="WS1", detail={"why": "không tìm thấy"})
    target = tmp_path / "audit.csv"
    status, out, err = _export(web, capsys, "--format", "csv", "--output", str(target), "--action", "dimse.*", "--actor", "WS1")
    assert status == 0 and out == "" and "5 audit events" in err
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert len(rows) == 5 and list(rows[0]) == list(audit_log.COLUMNS)
    assert rows[-1]["outcome"] == "failure" and json.loads(rows[-1]["detail"]) == {"why": "không tìm thấy"}
    assert rows[0]["study_instance_uid"] == OTHER_STUDY and rows[-1]["study_instance_uid"] == ""
    assert not list(tmp_path.glob(".*partial"))

    status, out, _err = _export(web, capsys, "--format", "csv", "--outcome", "failure", "--since", "2000-01-01", "--until", "2000-01-02")
    assert status == 0 and out.splitlines() == [",".join(audit_log.COLUMNS)]


def test_export_refuses_bad_filters_and_unwritable_files(web: WebArchive, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = _export(web, capsys, "--since", "last tuesday")
    assert status == 2 and out == "" and "ISO 8601" in err
    status, _out, err = _export(web, capsys, "--output", str(tmp_path / "no" / "such" / "dir" / "a.jsonl"))
    assert status == 1 and "cannot write" in err
