"""C-STORE SCP (PS3.4 B, Storage Service Class): a thin adapter over ``storage.ingest``.

Two doors lead here: pynetdicom's ``EVT_C_STORE`` handler (:func:`handle_store`), and the
fast path of event-driven associations (:mod:`dicom_node.fastpath`), which reads C-STORE
requests itself. Both call :meth:`StoreSCP.store`, so the checks, statuses and log lines
are the same whichever door a request came through.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_node.access import NotAuthorized, peer_of, require
from dicom_node.status import Status, failure_response, status_for
from storage.errors import ArchiveError, RejectedInstance, SOPClassMismatch
from storage.index import Source
from storage.ingest import Ingest, Received, Receiving

log = logging.getLogger("filmless.dicom.store")


class StoreSCP:
    """Stores received datasets; success only once the object is durable and indexed."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    @property
    def max_object_size(self) -> int:
        return self.ingest.max_object_size

    def receiving(
        self, assoc: Any, abstract_syntax: str, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str
    ) -> Receiving | None:
        """Start writing a C-STORE request's object as its data set arrives (the fast path
        calls this once the command set is read); None when :meth:`store` will refuse the
        request or the object cannot be written before it is parsed. Hand it to
        :meth:`store`, which settles it whatever the answer."""
        if sop_class_uid != abstract_syntax or not sop_instance_uid or not peer_of(assoc).may("store"):
            return None
        return self.ingest.receiving(transfer_syntax, sop_class_uid, sop_instance_uid, assoc.requestor.ae_title.strip())

    def store(
        self,
        assoc: Any,
        abstract_syntax: str,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        dataset: bytes | None,
        size: int,
        stream: Receiving | None = None,
    ) -> Dataset | int:
        """Store one C-STORE request's data set and return the response status.

        ``abstract_syntax``/``transfer_syntax``: the presentation context's;
        ``sop_class_uid``/``sop_instance_uid``: the request's Affected SOP Class and
        Instance UIDs (empty if absent); ``dataset`` None when it was not kept because its
        ``size`` exceeds the limit; ``stream`` the object already written as the data set
        arrived (:meth:`receiving`), used or dropped here."""
        try:
            calling = assoc.requestor.ae_title.strip()
            host = assoc.requestor.address
            try:
                require(assoc, "store")
            except NotAuthorized as exc:
                return failure_response(Status.NOT_AUTHORIZED, exc)
            try:
                if dataset is None:
                    raise self.ingest.too_large(size)
                requested = sop_class_uid or abstract_syntax
                if requested != abstract_syntax:
                    raise SOPClassMismatch(f"request SOP Class {requested} does not match the context's {abstract_syntax}")
                received = Received(
                    dataset=dataset,
                    transfer_syntax_uid=transfer_syntax,
                    source=Source(aet=calling, host=host),
                    expected_sop_class_uid=abstract_syntax,
                    expected_sop_instance_uid=sop_instance_uid or None,
                    stream=stream,
                )
                self.ingest.store_received(received)
                return int(Status.SUCCESS)
            except RejectedInstance as exc:
                status = status_for(exc)
                log.warning(
                    "C-STORE from %s@%s rejected (%s, 0x%04X): %s",
                    calling,
                    host,
                    status.name,
                    status,
                    exc.reason,
                )
                return failure_response(status, exc)
            except ArchiveError as exc:
                status = status_for(exc)
                log.error("C-STORE from %s@%s failed (%s): %s", calling, host, status.name, exc)
                return failure_response(status, exc)
            except Exception as exc:  # noqa: BLE001 - never let a bug become an unanswered request
                log.exception("C-STORE from %s@%s failed unexpectedly", calling, host)
                return failure_response(Status.PROCESSING_FAILURE, exc)
        finally:
            if stream is not None:
                stream.abandon()  # not used if the request was refused before the ingest


def handle_store(event: Event, scp: StoreSCP) -> Dataset | int:
    """pynetdicom's ``EVT_C_STORE`` handler."""
    request = cast(C_STORE, event.request)
    data = request.DataSet.getvalue() if request.DataSet is not None else b""
    return scp.store(
        event.assoc,
        str(event.context.abstract_syntax),
        str(event.context.transfer_syntax),
        str(request.AffectedSOPClassUID or ""),
        str(request.AffectedSOPInstanceUID or ""),
        data,
        len(data),
    )
