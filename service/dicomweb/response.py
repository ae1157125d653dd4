"""The STOW-RS store response (PS3.18 10.5.3) in the DICOM JSON model (PS3.18 F.2).

    ReferencedSOPSequence (0008,1199): one item per stored instance: ReferencedSOPClassUID (0008,1150),
        ReferencedSOPInstanceUID (0008,1155), the UIDs the client sent
    FailedSOPSequence (0008,1198): one item per refused part: the same two UIDs (empty when the part could
        not be read) and FailureReason (0008,1197)

RetrieveURL (0008,1190) is left out: this service has no WADO-RS retrieve to point at. The status is 200
when every instance was stored, 202 when some were and some failed, 409 when none was; each failure's detail
in words travels in a `Warning: 299` header (no patient data in it: part numbers and DICOM facts only).
"""

from __future__ import annotations

from typing import Any

from service.dicomweb.instances import Received, Rejected

MEDIA_TYPE = "application/dicom+json"
MAX_WARNINGS = 20  # header lines; the response body lists every failure


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def store_response(stored: list[Received], failed: list[Rejected]) -> dict[str, Any]:
    """The response data set as DICOM JSON (a dict to serialise)."""
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {"00081150": _uid(item.sop_class_uid), "00081155": _uid(item.sop_instance_uid)}
                for item in stored
            ],
        }
    if failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _uid(item.sop_class_uid),
                    "00081155": _uid(item.sop_instance_uid),
                    "00081197": {"vr": "US", "Value": [item.reason]},
                }
                for item in failed
            ],
        }
    return body


def status_code(n_stored: int, n_failed: int) -> int:
    """200 all stored, 202 some failed, 409 none stored."""
    if n_failed == 0:
        return 200
    return 202 if n_stored else 409


def warning_headers(failed: list[Rejected]) -> list[tuple[str, str]]:
    """One `Warning: 299 segserve "<detail>"` per failure (at most MAX_WARNINGS)."""
    lines = []
    for item in failed[:MAX_WARNINGS]:
        text = item.detail.replace("\\", "\\\\").replace('"', "'")
        text = text.encode("latin-1", "replace").decode("latin-1")
        lines.append(("warning", f'299 segserve "{text}"'))
    if len(failed) > MAX_WARNINGS:
        lines.append(("warning", f'299 segserve "{len(failed) - MAX_WARNINGS} more failures not listed"'))
    return lines
