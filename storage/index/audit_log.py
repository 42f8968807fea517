"""Reading the audit log (the ``audit_event`` table both front doors write): the one query behind
``GET /api/audit`` and ``filmless audit export``.

Events are found by a filter (:class:`AuditFilter`) and read by keyset on their id, never by
offset: :func:`page` returns the newest first, a page at a time (``before`` = the id the next
page starts under), :func:`stream` returns them all, oldest first, in batches, so that an export
of a log of millions of events holds one batch in memory at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select

from storage.errors import ArchiveError
from storage.index.repository import Index
from storage.index.schema import audit_event

MAX_PAGE = 1000
"""Most events one :func:`page` returns."""

COLUMNS = (
    "id",
    "at",
    "action",
    "outcome",
    "actor",
    "actor_host",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "detail",
)
"""The fields of an event as :meth:`AuditRecord.as_dict` gives them (and the CSV columns)."""


class AuditFilterError(ArchiveError):
    """A filter of the audit log that cannot be used (a time that is not ISO 8601, ...)."""


def parse_time(text: str, name: str = "time") -> datetime:
    """An ISO 8601 date or date-time (``2025-03-01``, ``2025-03-01T08:00:00+07:00``, ``...Z``);
    without a time zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise AuditFilterError(f"{name}: {text!r} is not an ISO 8601 date or date-time") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class AuditFilter:
    """Which events: every given field must match (exactly; ``action`` ending in ``*`` is a
    prefix, e.g. ``admin.*``). ``since`` is inclusive, ``until`` exclusive."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    study: str | None = None
    host: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        c = audit_event.c
        where: list[ColumnElement[bool]] = []
        # Times are compared in UTC: SQLite keeps them as UTC text without an offset.
        if self.since is not None:
            where.append(c.at >= _utc(self.since))
        if self.until is not None:
            where.append(c.at < _utc(self.until))
        if self.actor is not None:
            where.append(c.actor == self.actor)
        if self.action is not None:
            if self.action.endswith("*"):
                prefix = self.action.rstrip("*")
                escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                where.append(c.action.like(f"{escaped}%", escape="\\"))
            else:
                where.append(c.action == self.action)
        if self.outcome is not None:
            where.append(c.outcome == self.outcome)
        if self.study is not None:
            where.append(c.study_instance_uid == self.study)
        if self.host is not None:
            where.append(c.actor_host == self.host)
        return where

    def as_dict(self) -> dict[str, str]:
        """The filter's given fields (for the audit event of reading the log)."""
        values: dict[str, str] = {}
        for name in ("since", "until", "actor", "action", "outcome", "study", "host"):
            value = getattr(self, name)
            if value is not None:
                values[name] = value.isoformat() if isinstance(value, datetime) else str(value)
        return values


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    action: str
    outcome: str
    actor: str | None
    actor_host: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    detail: Any
    """The detail as recorded (JSON, decoded); text that is not JSON stays text."""

    @classmethod
    def from_row(cls, row: Any) -> AuditRecord:
        m = row._mapping
        detail: Any = m["detail"]
        if detail is not None:
            try:
                detail = json.loads(detail)
            except ValueError:
                pass
        at: datetime = m["at"]
        return cls(
            id=int(m["pk"]),
            at=_utc(at),
            action=m["action"],
            outcome=m["outcome"],
            actor=m["actor"],
            actor_host=m["actor_host"],
            study_instance_uid=m["study_instance_uid"],
            series_instance_uid=m["series_instance_uid"],
            sop_instance_uid=m["sop_instance_uid"],
            detail=detail,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "action": self.action,
            "outcome": self.outcome,
            "actor": self.actor,
            "actor_host": self.actor_host,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "detail": self.detail,
        }


def _select(flt: AuditFilter) -> Select[Any]:
    return select(audit_event).where(*flt.conditions())


def page(
    index: Index, flt: AuditFilter, *, limit: int = 100, before: int | None = None
) -> tuple[list[AuditRecord], int | None]:
    """Up to ``limit`` events matching ``flt``, newest first, with ids below ``before``; and
    the ``before`` of the next page (None when this one is the last)."""
    if not 1 <= limit <= MAX_PAGE:
        raise AuditFilterError(f"limit must be between 1 and {MAX_PAGE}")
    stmt = _select(flt)
    if before is not None:
        stmt = stmt.where(audit_event.c.pk < before)
    stmt = stmt.order_by(audit_event.c.pk.desc()).limit(limit + 1)
    with index.read() as conn:
        records = [AuditRecord.from_row(row) for row in conn.execute(stmt)]
    if len(records) > limit:
        records = records[:limit]
        return records, records[-1].id
    return records, None


def stream(index: Index, flt: AuditFilter, *, batch: int = 1000) -> Iterator[AuditRecord]:
    """Every event matching ``flt``, oldest first, read ``batch`` at a time (one short read
    transaction each, so a long export holds no connection while its consumer writes)."""
    after = 0
    while True:
        stmt = _select(flt).where(audit_event.c.pk > after).order_by(audit_event.c.pk).limit(batch)
        with index.read() as conn:
            rows = conn.execute(stmt).all()
        for row in rows:
            yield AuditRecord.from_row(row)
        if len(rows) < batch:
            return
        after = int(rows[-1]._mapping["pk"])


__all__ = ["COLUMNS", "MAX_PAGE", "AuditFilter", "AuditFilterError", "AuditRecord", "page", "parse_time", "stream"]
