"""Pushing a finished job's DICOM SEG to a PACS over STOW-RS (SEGSERVE_DICOMWEB_PUSH_URL).

After a DICOM job's SEG is written, the worker POSTs it to `<push url>/studies` as
multipart/related; type="application/dicom" (with `Authorization: Bearer <SEGSERVE_DICOMWEB_PUSH_TOKEN>`
when one is set). The outcome, success or failure (unreachable, refused, or stored with a FailureReason),
is recorded in the audit log (action `dicomweb.push`, the job as resource) and logged by job id; a push
never fails the job, and is not retried (the SEG stays available at GET /v1/jobs/{id}/result?format=
dicom-seg). With de-identification on, the SEG carries the replacement UIDs (tie back via GET /v1/intake).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segserve.audit import record
from segserve.config import Settings
from segserve.db import new_session

log = logging.getLogger(__name__)
_FAILED_SOP_SEQUENCE, _FAILURE_REASON = "00081198", "00081197"


@dataclass(frozen=True)
class PushOutcome:
    ok: bool
    http_status: int | None
    detail: str


def push_seg(base_url: str, seg_path: Path, token: str | None, timeout_s: float) -> PushOutcome:
    """STOW-RS the SEG file at `seg_path` to `<base_url>/studies`. Never raises for a failed push."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            seg_path.read_bytes(),  # a SEG is a few MB at most: one piece is fine
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/studies", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, payload = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, payload = int(exc.code), exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return PushOutcome(False, None, f"the DICOMweb endpoint could not be reached ({reason})")
    reasons = _failure_reasons(payload)
    if status == 200 and not reasons:
        return PushOutcome(True, status, "stored")
    listed = ", ".join(f"0x{r:04X}" for r in reasons) or "none given"
    return PushOutcome(False, status, f"the endpoint answered {status} (failure reasons: {listed})")


def _failure_reasons(payload: bytes) -> list[int]:
    try:
        body: Any = json.loads(payload or b"{}")
        items = body.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
        return [int(item[_FAILURE_REASON]["Value"][0]) for item in items]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return []


def push_job_seg(settings: Settings, seg_path: Path, job_id: str, key_id: str) -> PushOutcome | None:
    """Push a job's SEG when SEGSERVE_DICOMWEB_PUSH_URL is set, and record the outcome; None when unset."""
    if not settings.dicomweb_push_url:
        return None
    outcome = push_seg(
        settings.dicomweb_push_url, seg_path, settings.dicomweb_push_token, settings.dicomweb_push_timeout_s
    )
    if outcome.ok:
        log.info("job %s: SEG pushed over STOW-RS", job_id)
    else:
        log.warning("job %s: SEG push failed: %s", job_id, outcome.detail)
    try:
        with new_session(settings.resolved_database_url) as session:
            record(
                session,
                key_id=key_id,
                action="dicomweb.push",
                resource_type="job",
                resource_id=job_id,
                client_address=None,
                status_code=outcome.http_status,
                detail={"ok": outcome.ok, "detail": outcome.detail},
            )
    except Exception:
        log.exception("job %s: could not record the SEG push", job_id)
    return outcome
