"""C-ECHO SCP (PS3.4 A.4, Verification Service Class)."""

from __future__ import annotations

from pynetdicom.events import Event

from dicom_node.access import NotAuthorized, require
from dicom_node.status import Status


def handle_echo(event: Event) -> int:
    try:
        require(event.assoc, "echo")
    except NotAuthorized:
        return int(Status.NOT_AUTHORIZED)
    return int(Status.SUCCESS)
