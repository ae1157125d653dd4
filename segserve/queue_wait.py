"""Where a queued job stands: its place in its queue and when it should start and finish.

Order (the order the broker serves, see workers.celery_app.PRIORITY_STEPS): stat jobs before routine jobs,
then by submission time (`created_at`, ties by id). The database knows every queued job, so the place is
counted there, not in the broker.

Estimate, in seconds from now:

    start  = (sum over running jobs on the queue of max(0, run_time(model) - elapsed)
              + sum over queued jobs ahead of run_time(model)) / slots
    finish = start + run_time(this job's model)

`run_time(model)` is the median duration (started_at to finished_at) of that model's last `runs` succeeded
jobs; a model ahead without history counts with this job's model's median. `slots` is the number of jobs
running on the queue, at least 1: while jobs wait on a queue every worker slot serving it is busy, so the
running jobs count the slots without asking the workers. The estimate is null when this job's model has
no succeeded run yet.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from segserve.db import Job, JobPriority, JobStatus, utcnow

METHOD = (
    "start = (remaining median run time of the jobs running on the queue + median run times of the queued "
    "jobs ahead) / slots; finish = start + this model's median run time. Medians over each model's last "
    "{runs} succeeded jobs; slots = jobs running on the queue (at least 1)."
)


@dataclass(frozen=True)
class RunTime:
    """Median run time of a model's recent succeeded jobs, seconds, and how many runs it is over."""

    median_s: float
    runs: int


@dataclass(frozen=True)
class Estimate:
    start: datetime
    finish: datetime
    run_time: RunTime
    slots: int
    method: str


@dataclass(frozen=True)
class QueueWait:
    """`position` 1 is the next job to start; `ahead` = position - 1."""

    position: int
    ahead: int
    estimate: Estimate | None


def run_times(session: Session, model_ids: set[str], runs: int) -> dict[str, RunTime]:
    """Median duration of each model's last `runs` succeeded jobs; models with no such job are left out."""
    out: dict[str, RunTime] = {}
    for model_id in sorted(model_ids):
        rows = session.execute(
            select(Job.started_at, Job.finished_at)
            .where(
                Job.model_id == model_id,
                Job.status == JobStatus.succeeded.value,
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .order_by(Job.finished_at.desc())
            .limit(runs)
        ).all()
        durations = [(end - start).total_seconds() for start, end in rows if start and end and end >= start]
        if durations:
            out[model_id] = RunTime(median_s=float(statistics.median(durations)), runs=len(durations))
    return out


def _ahead_of(job: Job) -> ColumnElement[bool]:
    """Queued jobs on the same queue that the broker serves before `job`."""
    earlier = or_(Job.created_at < job.created_at, and_(Job.created_at == job.created_at, Job.id < job.id))
    same_priority = and_(Job.priority == job.priority, earlier)
    if job.priority == JobPriority.stat.value:
        placed = same_priority
    else:
        placed = or_(Job.priority == JobPriority.stat.value, same_priority)
    return and_(Job.status == JobStatus.queued.value, Job.queue == job.queue, Job.id != job.id, placed)


def queue_wait(session: Session, job: Job, *, runs: int, now: datetime | None = None) -> QueueWait | None:
    """The place and estimate of a queued job; None for a job that is not queued."""
    if job.status != JobStatus.queued.value:
        return None
    now = now or utcnow()
    by_model = select(Job.model_id, func.count()).where(_ahead_of(job)).group_by(Job.model_id)
    ahead_by_model = {model_id: int(count) for model_id, count in session.execute(by_model)}
    running = session.execute(
        select(Job.model_id, Job.started_at).where(
            Job.status == JobStatus.running.value, Job.queue == job.queue
        )
    ).all()
    ahead = int(sum(ahead_by_model.values()))
    medians = run_times(session, {job.model_id, *ahead_by_model, *(m for m, _ in running)}, runs)
    own = medians.get(job.model_id)
    if own is None:
        return QueueWait(position=ahead + 1, ahead=ahead, estimate=None)

    def run_s(model_id: str) -> float:
        return medians.get(model_id, own).median_s

    remaining = sum(
        max(0.0, run_s(m) - ((now - started).total_seconds() if started else 0.0)) for m, started in running
    )
    queued = sum(count * run_s(m) for m, count in ahead_by_model.items())
    slots = max(1, len(running))
    start = now + timedelta(seconds=(remaining + queued) / slots)
    estimate = Estimate(
        start=start,
        finish=start + timedelta(seconds=own.median_s),
        run_time=own,
        slots=slots,
        method=METHOD.format(runs=runs),
    )
    return QueueWait(position=ahead + 1, ahead=ahead, estimate=estimate)


def queued_count(session: Session, key_id: str) -> int:
    """How many jobs submitted with this key are queued."""
    count = select(func.count()).select_from(Job)
    mine = count.where(Job.submitted_by == key_id, Job.status == JobStatus.queued.value)
    return int(session.scalar(mine) or 0)


def first_start(session: Session, key_id: str, *, runs: int, now: datetime | None = None) -> datetime | None:
    """The earliest estimated start among this key's queued jobs (when its queued count should drop), or
    None when no estimate can be made."""
    now = now or utcnow()
    first_per_queue: dict[str, Job] = {}
    for job in session.scalars(
        select(Job)
        .where(Job.submitted_by == key_id, Job.status == JobStatus.queued.value)
        .order_by(Job.priority != JobPriority.stat.value, Job.created_at, Job.id)
    ):
        first_per_queue.setdefault(job.queue, job)
    starts = []
    for job in first_per_queue.values():
        wait = queue_wait(session, job, runs=runs, now=now)
        if wait is not None and wait.estimate is not None:
            starts.append(wait.estimate.start)
    return min(starts, default=None)
