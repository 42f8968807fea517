"""C-ECHO SCP (PS3.4 A.4, Verification Service Class)."""

from __future__ import annotations

from pynetdicom.events import Event

from dicom_node.status import Status


def handle_echo(event: Event) -> int:
    return int(Status.SUCCESS)
