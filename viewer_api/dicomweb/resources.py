"""What a DICOMweb path names, checked once for every route: UIDs, frame lists, and the URL
of an instance (RetrieveURL, Content-Location, BulkDataURI)."""

from __future__ import annotations

import re

from viewer_api.errors import Problem

# Lenient on purpose: stored UIDs from old modalities may have leading zeros in a component.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_FRAME_NUMBER = re.compile(r"[0-9]{1,9}")


def is_uid(text: str) -> bool:
    """Whether ``text`` has the form of a DICOM UID (digits and dots, at most 64 characters)."""
    return len(text) <= 64 and _UID.fullmatch(text) is not None


def check_uids(*uids: str | None) -> None:
    """400 for the first of ``uids`` (None: not given) that is not a UID."""
    for uid in uids:
        if uid is not None and not is_uid(uid):
            raise Problem(400, "Invalid UID", f"{uid[:80]!r} is not a valid DICOM UID")


def frame_numbers(text: str, limit: int) -> list[int]:
    """The frame numbers of a ``{frames}`` path segment (``1,3,5``); 400 unless each is a
    positive integer and there are at most ``limit``."""
    numbers: list[int] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not _FRAME_NUMBER.fullmatch(piece) or int(piece) < 1:
            raise Problem(400, "Invalid frame list", f"frame numbers are positive integers separated by commas, not {text[:80]!r}")
        numbers.append(int(piece))
    if len(numbers) > limit:
        raise Problem(400, "Invalid frame list", f"at most {limit} frames per request")
    return numbers


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    """The WADO-RS URL of an instance under ``base`` (the API's address, no slash)."""
    return f"{base}/dicom-web/studies/{study}/series/{series}/instances/{instance}"
