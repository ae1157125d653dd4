"""Job state transitions. Every change is a single conditional UPDATE, so two workers (or a worker and a
cancelling client) never both win: whoever's WHERE clause still matches wins, the other sees rowcount 0.

    queued --claim--> running --finish--> succeeded | failed | cancelled
    running (lease expired) --claim by another worker--> running
    queued --cancel--> cancelled;  running --cancel--> cancel_requested, then cancelled by the worker
    running (its worker is stopping) --release--> queued (the attempt is not counted)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from segserve.db import Job, JobPriority, JobStage, JobStatus, utcnow


def build_job(
    job_id: str,
    *,
    model_id: str,
    model_version: str,
    queue: str,
    input_format: str,
    input_files: list[str],
    reference_files: list[str],
    image_shape: list[int],
    image_spacing_mm: list[float],
    submitted_by: str,
    evaluation_id: str | None = None,
    case_id: str | None = None,
    priority: JobPriority = JobPriority.routine,
) -> Job:
    """A new queued job row (not yet added to a session)."""
    return Job(
        id=job_id,
        status=JobStatus.queued.value,
        model_id=model_id,
        model_version=model_version,
        queue=queue,
        priority=priority.value,
        input_format=input_format,
        input_files=input_files,
        reference_files=reference_files,
        image_shape=image_shape,
        image_spacing_mm=image_spacing_mm,
        submitted_by=submitted_by,
        evaluation_id=evaluation_id,
        case_id=case_id,
    )


def _update_owned(session: Session, job_id: str, worker: str, values: dict[str, object]) -> bool:
    """Apply `values` to a running job only while `worker` owns it. Commits."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running.value)
        .values(**values)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def claim(session: Session, job_id: str, worker: str, lease_s: float) -> bool:
    """Take a queued job, or a running one whose worker stopped renewing its lease. Commits."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(
                Job.status == JobStatus.queued.value,
                and_(Job.status == JobStatus.running.value, Job.lease_expires_at < now),
            ),
        )
        .values(
            status=JobStatus.running.value,
            worker=worker,
            attempts=Job.attempts + 1,
            started_at=now,
            updated_at=now,
            progress=0.0,
            lease_expires_at=now + timedelta(seconds=lease_s),
        )
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew(session: Session, job_id: str, worker: str, lease_s: float, progress: float | None = None) -> bool:
    """Extend the lease (and record progress). False when this worker no longer owns the job. Commits."""
    now = utcnow()
    values: dict[str, object] = {"lease_expires_at": now + timedelta(seconds=lease_s), "updated_at": now}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    return _update_owned(session, job_id, worker, values)


def finish(
    session: Session,
    job_id: str,
    worker: str,
    status: JobStatus,
    *,
    error: str | None = None,
    error_code: str | None = None,
) -> bool:
    """Move a running job owned by `worker` to a final status. Commits."""
    now = utcnow()
    values: dict[str, object] = {
        "status": status.value,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "error": error,
        "error_code": error_code,
    }
    if status is JobStatus.succeeded:
        values["progress"] = 1.0
    return _update_owned(session, job_id, worker, values)


def record_stages(session: Session, job_id: str, attempt: int, stages: Mapping[str, float]) -> None:
    """Store the seconds each finished stage of attempt `attempt` took (see segserve.db.JobStage). A stage
    recorded before for the same attempt is replaced. Commits."""
    for stage, seconds in stages.items():
        session.merge(JobStage(job_id=job_id, attempt=attempt, stage=stage, seconds=float(seconds)))
    session.commit()


def release(session: Session, job_id: str, worker: str) -> bool:
    """Hand a running job owned by `worker` back to the queue (its worker is shutting down): queued again,
    lease and progress cleared, and the attempt taken back, so `attempts` counts only runs that ended or
    whose worker died. Not when the client asked to cancel it (the caller finishes it as cancelled then).
    Commits; False when the job is no longer this worker's or a cancel was requested."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.worker == worker,
            Job.status == JobStatus.running.value,
            Job.cancel_requested.is_(False),
        )
        .values(
            status=JobStatus.queued.value,
            worker=None,
            lease_expires_at=None,
            progress=0.0,
            started_at=None,
            attempts=Job.attempts - 1,  # claim added one; the row is ours, so it is at least 1
            updated_at=now,
            enqueued_at=now,
        )
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel(session: Session, job_id: str) -> JobStatus | None:
    """Cancel a queued job at once, or ask a running job's worker to stop. Commits.

    Returns the status after the call (cancelled, or running with cancel requested), or None when the
    job had already finished.
    """
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.cancelled.value, finished_at=now, updated_at=now, cancel_requested=True)
    )
    if done.rowcount:  # type: ignore[attr-defined]
        session.commit()
        return JobStatus.cancelled
    asked = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value)
        .values(cancel_requested=True, updated_at=now)
    )
    session.commit()
    return JobStatus.running if asked.rowcount else None  # type: ignore[attr-defined]


def cancel_abandoned_request(session: Session, job_id: str) -> bool:
    """A running job with cancel requested whose worker died: nobody will stop it, so finish it here."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.running.value,
            Job.cancel_requested.is_(True),
            Job.lease_expires_at < now,
        )
        .values(status=JobStatus.cancelled.value, finished_at=now, updated_at=now, lease_expires_at=None)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    session.commit()


def abandoned(session: Session, *, include_queued: bool, now: datetime | None = None) -> list[Job]:
    """Jobs that need a new message: running ones whose lease expired, and (on start-up, when the broker
    may have lost its queue) every queued one."""
    now = now or utcnow()
    conditions = [and_(Job.status == JobStatus.running.value, Job.lease_expires_at < now)]
    if include_queued:
        conditions.append(Job.status == JobStatus.queued.value)
    return list(session.scalars(select(Job).where(or_(*conditions)).order_by(Job.created_at)))


_FINAL = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)


def evaluation_case_counts(session: Session, evaluation_id: str) -> tuple[int, int]:
    """(finished jobs, all jobs) of a dataset evaluation."""
    in_evaluation = select(func.count()).select_from(Job).where(Job.evaluation_id == evaluation_id)
    total = session.scalar(in_evaluation) or 0
    done = session.scalar(in_evaluation.where(Job.status.in_(_FINAL))) or 0
    return int(done), int(total)
