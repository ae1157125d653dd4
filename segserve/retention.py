"""Deleting finished jobs' files: after the deployment's retention (SEGSERVE_RETENTION_DAYS), or at once on
an admin's DELETE. The job's row stays as a tombstone (`files_deleted_at`), and each deletion is one audit
event (`job.files_deleted`) written in the same transaction as the tombstone.

Only finished jobs (succeeded, failed, cancelled) are touched: a finished job never runs again, so its
directory has no writer left. Order of the steps, safe with any number of workers doing the same:
  1. remove `<data_dir>/jobs/<id>/` (inputs, results, reviewers' label versions, the viewer's copies);
     a directory another worker is removing at the same time is no error;
  2. one conditional UPDATE sets `files_deleted_at` where it is still null: exactly one caller wins it and
     writes the audit event in the same commit; the others see rowcount 0 and write nothing.
A crash between 1 and 2 leaves a job without files and without tombstone, which the next pass completes;
never a tombstone over files that still exist. Audit events carry the job id only, never patient data.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from segserve.audit import record
from segserve.db import Evaluation, Job, JobStatus, utcnow
from segserve.storage import JobFiles

FILES_DELETED = "job.files_deleted"
"""The audit action of a deletion; `detail.by` says who: "retention" (key_id null) or "admin"."""

_FINISHED = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)
_UNFINISHED = (JobStatus.queued.value, JobStatus.running.value)


def expired_jobs(
    session: Session, retention_s: float, *, limit: int, now: datetime | None = None
) -> list[str]:
    """Ids of finished jobs whose files are still there and that finished more than `retention_s` seconds
    ago, oldest first, at most `limit`. Case jobs of a dataset evaluation that is still running are left
    until it has finished (its last step reads their results)."""
    cutoff = (now or utcnow()) - timedelta(seconds=retention_s)
    evaluation_running = exists().where(
        Evaluation.id == Job.evaluation_id, Evaluation.status.in_(_UNFINISHED)
    )
    stmt = (
        select(Job.id)
        .where(
            Job.status.in_(_FINISHED),
            Job.finished_at < cutoff,
            Job.files_deleted_at.is_(None),
            ~evaluation_running,
        )
        .order_by(Job.finished_at, Job.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def remove_job_dir(jobs_dir: Path, job_id: str) -> None:
    """Remove a job's directory. Gone already is fine, and so is a file that vanishes mid-way (another
    worker removing the same directory); any other failure raises OSError."""
    root = JobFiles(jobs_dir, job_id).root
    for attempt in range(100):
        try:
            shutil.rmtree(root)
            return
        except FileNotFoundError:
            if not root.exists():
                return
            if attempt == 99:
                raise


def delete_files(
    session: Session,
    jobs_dir: Path,
    job_id: str,
    *,
    by: str,
    key_id: str | None = None,
    client_address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> datetime | None:
    """Remove a FINISHED job's files and leave its tombstone and audit event (module docstring). `by`:
    "retention" or "admin". Returns the tombstone's time when this call set it; None when the job is
    missing, not finished (nothing is touched then), or was already tombstoned (its directory is removed
    again, in case a crash left it). Commits. Raises OSError when the files cannot be removed (no tombstone
    then)."""
    job = session.get(Job, job_id)
    if job is None or job.status not in _FINISHED:
        return None
    remove_job_dir(jobs_dir, job_id)
    now = utcnow()
    won = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_FINISHED), Job.files_deleted_at.is_(None))
        .values(files_deleted_at=now, updated_at=now)
    )
    if not won.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return None
    record(  # commits the tombstone and its event together
        session,
        key_id=key_id,
        action=FILES_DELETED,
        resource_type="job",
        resource_id=job_id,
        client_address=client_address,
        detail={"by": by, "status": job.status, **(detail or {})},
    )
    return now
