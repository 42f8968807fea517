"""The web side's writer of the audit log (the ``audit_event`` table the DIMSE side writes too).

Reads of patient data are many (a viewer fetches a series frame by frame), so they are queued
and written in batches by one thread, a fraction of a second later; writes and deletes of
patient data, and sign-ins, are written before the response (``sync=True``). On shutdown the
queue is drained.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from sqlalchemy import insert

from storage.index import Index
from storage.index.repository import utcnow
from storage.index.schema import audit_event
from viewer_api.security import Principal

log = logging.getLogger("filmless.audit")

_BATCH = 500
_STOP = object()


def client_host(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


class AuditTrail:
    def __init__(self, index: Index, *, flush_seconds: float = 0.2) -> None:
        self.index = index
        self.flush_seconds = flush_seconds
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @staticmethod
    def event(
        action: str,
        outcome: str,
        *,
        principal: Principal | None = None,
        actor: str | None = None,
        host: str | None = None,
        study: str | None = None,
        series: str | None = None,
        instance: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        who = actor if actor is not None else principal.username if principal is not None else None
        if principal is not None:
            detail = {"role": principal.role, "via": principal.via, **(detail or {})}
            if principal.key_id:
                detail["api_key"] = principal.key_id
        event = {
            "at": utcnow(),
            "action": action,
            "outcome": outcome,
            "actor": who,
            "actor_host": host,
            "study_instance_uid": study,
            "series_instance_uid": series,
            "sop_instance_uid": instance,
            "detail": json.dumps(dict(detail), ensure_ascii=False, default=str) if detail else None,
        }
        # What a client sent (a user name, a query) is recorded as sent, except for NUL, which
        # PostgreSQL does not take in text: the event must be written whatever the input.
        return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in event.items()}

    def record(self, action: str, outcome: str, *, sync: bool = False, **kwargs: Any) -> None:
        """Record one event (see :meth:`event` for the fields)."""
        event = self.event(action, outcome, **kwargs)
        if sync:
            self._write([event])
        else:
            self._queue.put(event)

    def _write(self, events: list[dict[str, Any]]) -> None:
        with self.index.write() as conn:
            conn.execute(insert(audit_event), events)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[dict[str, Any]] = []
            waiters: list[threading.Event] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.append(item)
                if stopping or len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get(timeout=self.flush_seconds if not waiters else 0.001)
                except queue.Empty:
                    break
            if batch:
                self._flush(batch)
            for waiter in waiters:
                waiter.set()

    def _flush(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(5):
            try:
                self._write(batch)
                return
            except Exception as exc:  # noqa: BLE001 - the writer must outlive index outages
                log.warning("could not write %d audit events (attempt %d): %s", len(batch), attempt + 1, exc)
                threading.Event().wait(min(5.0, 0.2 * 2**attempt))
        log.error("dropped %d audit events after repeated index failures: %s", len(batch), batch[:3])

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until what is queued now has been written (for tests and shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
