"""C-STORE SCP (PS3.4 B, Storage Service Class): a thin adapter over ``storage.ingest``."""

from __future__ import annotations

import logging
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_node.access import NotAuthorized, require
from dicom_node.status import Status, failure_response, status_for
from storage.errors import ArchiveError, RejectedInstance, SOPClassMismatch
from storage.index import Source
from storage.ingest import Ingest, Received

log = logging.getLogger("filmless.dicom.store")


def handle_store(event: Event, ingest: Ingest) -> Dataset | int:
    """Store the received dataset; reply success only once it is durable and indexed."""
    assoc = event.assoc
    calling = assoc.requestor.ae_title.strip()
    host = assoc.requestor.address
    request = cast(C_STORE, event.request)
    try:
        require(assoc, "store")
    except NotAuthorized as exc:
        return failure_response(Status.NOT_AUTHORIZED, exc)
    try:
        data = request.DataSet.getvalue() if request.DataSet is not None else b""
        negotiated = str(event.context.abstract_syntax)
        requested = str(request.AffectedSOPClassUID or negotiated)
        if requested != negotiated:
            raise SOPClassMismatch(f"request SOP Class {requested} does not match the context's {negotiated}")
        received = Received(
            dataset=data,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            source=Source(aet=calling, host=host),
            expected_sop_class_uid=negotiated,
            expected_sop_instance_uid=str(request.AffectedSOPInstanceUID or "") or None,
        )
        ingest.store_received(received)
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
