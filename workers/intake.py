"""Closing the series received over DICOMweb once they have gone quiet: one job per series.

Runs in every worker's main process (a thread beside the recovery loop, started in workers/tasks.py), never
in a task, and never runs a model. Why the worker: its main process idles while the pool children run
models, so decoding a series to validate it costs the API nothing; and like recovery, it must work with
several workers at once, which the claim in segserve.intake makes safe (one conditional UPDATE: exactly one
sweeper turns a series into a job).

Closing a claimed series (`close_series`), each step safe to repeat after a crash:
  1. rename `<incoming>/<id>` to `<incoming>/<id>.closing`: from now on a late instance finds no directory
     to link into and starts a new collection of its series (service/dicomweb/collect.py);
  2. validate exactly as POST /v1/jobs does (`read_image` over the files: one series, geometry checks,
     pixel decoding), keep the decoded volume beside the files as it does (segserve.scans.decoded) and
     check the model is still available;
  3. move the files to the job's `input/` (one rename), then commit the job row (segserve.jobs.build_job)
     and the series' closing -> submitted in ONE transaction;
  4. publish the job id as POST /v1/jobs does (workers.celery_app.publish_committed_job).
A series that fails 2 is marked failed with the reason (shown by GET /v1/intake) and its files removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from models.catalog import Catalog
from segserve import jobs as job_states
from segserve.audit import record
from segserve.config import Settings
from segserve.db import IncomingSeries, IntakeState, Job, JobPriority, new_session
from segserve.imaging.errors import ImageError
from segserve.intake import claim_quiet, mark_failed, submitted_values
from segserve.scans.decoded import save_decoded
from segserve.scans.readers import read_image
from segserve.storage import JobFiles
from workers.celery_app import publish_committed_job

log = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def sweep(celery_app: Celery, settings: Settings) -> int:
    """Claim and close every series quiet for SEGSERVE_DICOMWEB_QUIET_S; returns how many were closed."""
    with new_session(settings.resolved_database_url) as session:
        claimed = claim_quiet(session, settings.dicomweb_quiet_s)
    for series_id in claimed:
        try:
            close_series(celery_app, settings, series_id)
        except Exception:  # stays "closing"; taken over after segserve.intake.CLOSING_STALE_S
            log.warning("intake %s: closing failed; it will be retried", series_id, exc_info=True)
    return len(claimed)


def close_series(celery_app: Celery, settings: Settings, series_id: str) -> str:
    """Turn a claimed (closing) series into its job, or mark it failed. Returns the series' new state."""
    url = settings.resolved_database_url
    with new_session(url) as session:
        row = session.get(IncomingSeries, series_id)
        if row is None or row.state != IntakeState.closing.value or row.job_id is None:
            return row.state if row is not None else "missing"
        session.expunge(row)
    assert row.job_id is not None
    files = JobFiles(settings.jobs_dir, row.job_id)
    source = _take_files(settings.incoming_dir, series_id, files)
    try:
        valid = _validate(settings, row, source)
    except _Refused as refused:
        with new_session(url) as session:
            mark_failed(session, series_id, refused.code, refused.message)
            _audit(session, row, "intake.failed", "incoming_series", series_id, {"error_code": refused.code})
        _remove(source, files)
        log.info("intake %s: failed (%s)", series_id, refused.code)
        return IntakeState.failed.value
    if source != files.root / "input":
        files.root.mkdir(parents=True, exist_ok=True)
        os.rename(source, files.root / "input")
    with new_session(url) as session:
        if session.get(Job, row.job_id) is None:
            session.add(
                job_states.build_job(
                    row.job_id,
                    model_id=row.model_id,
                    model_version=valid.model_version,
                    queue=settings.default_queue,
                    input_format=valid.input_format,
                    input_files=valid.names,
                    reference_files=[],
                    image_shape=valid.shape,
                    image_spacing_mm=valid.spacing_mm,
                    submitted_by=row.submitted_by,
                )
            )
        changed = session.execute(
            update(IncomingSeries)
            .where(IncomingSeries.id == series_id, IncomingSeries.state == IntakeState.closing.value)
            .values(**submitted_values(len(valid.names)))
        )
        if not changed.rowcount:  # type: ignore[attr-defined]
            session.rollback()  # another sweeper took over a close it thought stalled, and finished it
            return "taken over"
        session.commit()
        _audit(session, row, "intake.job_created", "job", row.job_id, {"incoming_series": series_id})
    publish_committed_job(celery_app, settings, row.job_id, settings.default_queue, JobPriority.routine)
    log.info("intake %s: job %s created from %d instance(s)", series_id, row.job_id, len(valid.names))
    return IntakeState.submitted.value


def _take_files(incoming_dir: Path, series_id: str, files: JobFiles) -> Path:
    """Step 1: the directory that now holds the series' files (see the module docstring)."""
    collected, closing = incoming_dir / series_id, incoming_dir / f"{series_id}.closing"
    if collected.exists():
        os.rename(collected, closing)
    if closing.exists():
        return closing
    return files.root / "input"  # a crash after step 3's rename: the files are already in place


@dataclass(frozen=True)
class _Valid:
    names: list[str]  # the instance files, in the job's input/image/
    model_version: str
    input_format: str
    shape: list[int]
    spacing_mm: list[float]


def _validate(settings: Settings, row: IncomingSeries, source: Path) -> _Valid:
    """Step 2: the checks of POST /v1/jobs. Raises _Refused with the reason."""
    image_dir = source / "image"
    names = sorted(p.name for p in image_dir.iterdir()) if image_dir.is_dir() else []
    if not names:
        raise _Refused("no_instances", "no instance of the series was stored")
    status = Catalog(settings.resolved_models_dir).status(row.model_id)
    if not status.available:
        raise _Refused("model_unavailable", f"model '{row.model_id}' is unavailable: {status.reason}")
    try:
        volume = read_image([image_dir / n for n in names])
    except ImageError as exc:
        raise _Refused(exc.code, str(exc)) from None
    save_decoded(volume, source, "image")  # the job's worker maps these voxels: the series is decoded once
    return _Valid(
        names=names,
        model_version=status.card.version,
        input_format=volume.source_format,
        shape=list(volume.shape),
        spacing_mm=[round(s, 6) for s in volume.spacing_mm],
    )


def _remove(source: Path, files: JobFiles) -> None:
    shutil.rmtree(source, ignore_errors=True)  # patient data of a series that cannot be used
    if source == files.root / "input":
        files.remove()


def _audit(
    session: Session, row: IncomingSeries, action: str, kind: str, resource: str, detail: dict[str, str]
) -> None:
    """Record the close under the key that sent the series; an audit failure never stops the close."""
    try:
        record(
            session,
            key_id=row.submitted_by,
            action=action,
            resource_type=kind,
            resource_id=resource,
            client_address=None,
            detail=detail,
        )
    except Exception:
        log.exception("intake %s: could not write the audit event %s", row.id, action)


class IntakeLoop:
    """Runs `sweep` every SEGSERVE_DICOMWEB_SWEEP_INTERVAL_S in a daemon thread."""

    def __init__(self, celery_app: Celery, settings: Settings) -> None:
        self._app = celery_app
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segserve-intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._settings.dicomweb_sweep_interval_s):
            try:
                sweep(self._app, self._settings)
            except Exception:
                log.warning("intake sweep failed; will retry", exc_info=True)
