"""Prepared statements write exactly what SQLAlchemy Core writes, on a real index (SQLite and
PostgreSQL, psycopg's parameter style)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from storage.index import create_index_engine
from storage.index.prepared import PlainRow, prepared
from storage.index.schema import audit_event, metadata, patient, study

WHEN = datetime(2026, 11, 22, 23, 59, 58, 123456, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path, new_index_url: Callable[[], str | None]) -> Iterator[Engine]:
    engine = create_index_engine(new_index_url() or f"sqlite:///{tmp_path / 'index.db'}")
    metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _patient(key: str) -> dict[str, Any]:
    return {
        "patient_key": key,
        "patient_id": key,
        "patient_name": "Nguyễn^Văn Đức",
        "patient_name_folded": "nguyen^van duc",
        "created_at": WHEN,
        "updated_at": WHEN,
    }


def _row(engine: Engine, key: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(patient).where(patient.c.patient_key == key)).one()
    values = row._asdict()
    values.pop("pk")
    values.pop("patient_key")
    values.pop("patient_id")
    return values


def test_an_insert_stores_what_core_stores(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(patient), _patient("core"))
        values = _patient("prepared")
        prepared(conn, "test insert patient", insert(patient), values).run(conn, values)
    assert _row(engine, "prepared") == _row(engine, "core")
    # PostgreSQL keeps the instant (TIMESTAMP WITH TIME ZONE), SQLite the UTC time without a zone.
    expected = WHEN if engine.dialect.name == "postgresql" else WHEN.replace(tzinfo=None)
    assert _row(engine, "prepared")["created_at"] == expected


def test_column_defaults_and_literals_are_applied(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(patient), _patient("p"))
        patient_pk = conn.execute(select(patient.c.pk)).scalar_one()
        values = {"study_instance_uid": "1.2.3", "patient_pk": patient_pk, "created_at": WHEN, "updated_at": WHEN}
        prepared(conn, "test insert study", insert(study), values).run(conn, values)
        bump = (
            update(study)
            .where(study.c.study_instance_uid == bindparam("uid"))
            .values(number_of_instances=study.c.number_of_instances + 1)
        )
        for _ in range(3):
            assert prepared(conn, "test bump", bump).run(conn, {"uid": "1.2.3"}) == 1
        row = conn.execute(select(study)).one()
    assert (row.modalities_in_study, row.number_of_series, row.number_of_instances) == ("", 0, 3)


def test_select_returns_plain_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(patient), _patient("p"))
        query = select(patient).where(patient.c.patient_key == bindparam("key"))
        row = prepared(conn, "test select", query).first(conn, {"key": "p"})
        assert isinstance(row, PlainRow)
        assert (row.patient_id, row.patient_name) == ("p", "Nguyễn^Văn Đức")
        with pytest.raises(AttributeError):
            _ = row.no_such_column
        assert prepared(conn, "test select", query).first(conn, {"key": "nobody"}) is None


def test_driver_errors_are_wrapped_like_core_wraps_them(engine: Engine) -> None:
    with engine.begin() as conn:
        values = _patient("p")
        stmt = prepared(conn, "test insert patient", insert(patient), values)
        stmt.run(conn, values)
        with pytest.raises(IntegrityError):
            stmt.run(conn, values)  # patient_key is unique


def test_a_rolled_back_transaction_keeps_nothing(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        values = {"at": WHEN, "action": "instance.store", "outcome": "success"}
        prepared(conn, "test audit", insert(audit_event), values).run(conn, values)
        raise RuntimeError("roll back")
    with engine.connect() as conn:
        assert conn.execute(select(audit_event)).all() == []
