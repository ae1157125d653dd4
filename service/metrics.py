"""Prometheus metrics for GET /metrics.

Everything that lives in the database (queue depth, jobs by status, durations, failures, intake series) is
computed at scrape time by `DatabaseCollector`, so any API process answers with the same, correct values
however many there are. Only `segserve_upload_bytes_total` is counted in the process (bytes this process
wrote to disk); with several API processes each counts its own, and Prometheus should scrape each one.

Durations come from the jobs table's timestamps (created_at, started_at, finished_at) and, per stage of a
run, from the job_stages rows the workers write (segserve.db.JobStage), bucketed in SQL, so a scrape
returns a few rows whatever the number of jobs. Deleting jobs lowers the counts (Prometheus sees a
counter reset); started_at is the start of the job's latest attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from segserve.config import Settings
from segserve.db import IncomingSeries, IntakeState, Job, JobStage, JobStatus, new_session
from segserve.storage import free_bytes

log = logging.getLogger(__name__)

#: Histogram bucket upper bounds, seconds: from a quick 2D job to the default one-hour time limit.
DURATION_BUCKETS_S: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
#: The priority a job has when the jobs table has no priority column (or the row's value is empty).
DEFAULT_PRIORITY = "routine"
_KNOWN_QUEUES = ("cpu", "gpu")

UPLOAD_BYTES = Counter(
    "segserve_upload_bytes",
    "Upload bytes this API process wrote to disk (POST /v1/jobs and STOW-RS bodies, also those later "
    "refused); per process.",
    ["route"],
    registry=None,
)


def _seconds(session: Session, start: Any, end: Any) -> ColumnElement[Any]:
    """SQL for `end - start` in seconds (both UTC timestamps), for SQLite or PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    # julianday's float days carry about 0.05 ms of rounding noise: round to whole milliseconds, so that a
    # duration of exactly 10 s falls in the le="10.0" bucket.
    return func.round((func.julianday(end) - func.julianday(start)) * 86400.0, 3)


class DatabaseCollector(Collector):
    """Reads the database at each scrape. A database that does not answer gives segserve_database_up 0
    and none of the database's metrics, rather than a failed scrape."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("segserve_database_up", "1 when the database answered this scrape.")
        try:
            with new_session(self._settings.resolved_database_url) as session:
                families = list(self._from_database(session))
        except Exception as exc:
            log.warning("metrics: database query failed (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_database(self, session: Session) -> Iterator[Metric]:
        yield self._queue_depth(session)
        by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        jobs = GaugeMetricFamily("segserve_jobs", "Jobs in the database by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        yield jobs

        finished = Job.finished_at.is_not(None)
        yield self._histogram(
            session,
            "segserve_job_queue_wait_seconds",
            "Time from submission to the start of the job's latest attempt, per model.",
            Job.created_at,
            Job.started_at,
            [Job.model_id],
            Job.started_at.is_not(None),
        )
        yield self._histogram(
            session,
            "segserve_job_run_seconds",
            "Time from the start of a finished job's latest attempt to its end, per model and final status.",
            Job.started_at,
            Job.finished_at,
            [Job.model_id, Job.status],
            finished & Job.started_at.is_not(None),
        )
        yield self._histogram(
            session,
            "segserve_job_duration_seconds",
            "Time from submission to the end of a finished job, per model and final status.",
            Job.created_at,
            Job.finished_at,
            [Job.model_id, Job.status],
            finished,
        )

        yield self._stage_histogram(session)

        failures = CounterMetricFamily(
            "segserve_job_failures",
            "Failed jobs in the database by error code and model.",
            labels=["code", "model"],
        )
        rows = session.execute(
            select(Job.error_code, Job.model_id, func.count())
            .where(Job.status == JobStatus.failed.value)
            .group_by(Job.error_code, Job.model_id)
        )
        for code, model, count in rows:
            failures.add_metric([code or "unknown", model], count)
        yield failures

        by_state = dict(
            session.execute(select(IncomingSeries.state, func.count()).group_by(IncomingSeries.state)).all()
        )
        intake = GaugeMetricFamily(
            "segserve_intake_series", "Series received over STOW-RS by intake state.", labels=["state"]
        )
        for state in IntakeState:
            intake.add_metric([state.value], by_state.get(state.value, 0))
        yield intake

    def _queue_depth(self, session: Session) -> Metric:
        """Queued jobs per (queue, priority). The priority is the jobs table's `priority` column where one
        exists, else `routine` for every job; queues cpu and gpu at `routine` are always present."""
        priority = Job.__table__.c.get("priority")
        columns: list[Any] = [Job.queue] + ([priority] if priority is not None else [])
        rows = session.execute(
            select(*columns, func.count()).where(Job.status == JobStatus.queued.value).group_by(*columns)
        ).all()
        depth: dict[tuple[str, str], int] = {
            (q, DEFAULT_PRIORITY): 0 for q in (*_KNOWN_QUEUES, self._settings.default_queue)
        }
        for row in rows:
            queue, count = row[0], row[-1]
            level = str(row[1]) if priority is not None and row[1] else DEFAULT_PRIORITY
            depth[(queue, level)] = depth.get((queue, level), 0) + int(count)
        family = GaugeMetricFamily(
            "segserve_queue_depth", "Queued jobs waiting for a worker.", labels=["queue", "priority"]
        )
        for (queue, level), count in sorted(depth.items()):
            family.add_metric([queue, level], count)
        return family

    def _stage_histogram(self, session: Session) -> Metric:
        """segserve_job_stage_seconds{model, stage}: the worker's stages of each job's run (read, load,
        predict, write, evaluate; segserve.db.JobStage), every attempt that finished them."""
        seconds = JobStage.seconds
        buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS_S]
        total = func.coalesce(func.sum(seconds), 0.0)
        query = (
            select(Job.model_id, JobStage.stage, func.count(), total, *buckets)
            .join(Job, Job.id == JobStage.job_id)
            .group_by(Job.model_id, JobStage.stage)
        )
        return self._family(
            "segserve_job_stage_seconds",
            "Seconds each stage of a job's run took in the worker (read, load, predict, write, evaluate), "
            "per model and stage.",
            ["model", "stage"],
            session.execute(query).all(),
        )

    def _histogram(
        self,
        session: Session,
        name: str,
        documentation: str,
        start: Any,
        end: Any,
        group: Sequence[Any],
        where: ColumnElement[bool],
    ) -> Metric:
        seconds = _seconds(session, start, end)
        buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS_S]
        query = select(*group, func.count(), func.coalesce(func.sum(seconds), 0.0), *buckets)
        rows = session.execute(query.where(where).group_by(*group)).all()
        return self._family(name, documentation, ["model", "status"][: len(group)], rows)

    @staticmethod
    def _family(name: str, documentation: str, labels: list[str], rows: Sequence[Any]) -> Metric:
        """A histogram from rows of (*label values, count, sum, cumulative count per DURATION_BUCKETS_S)."""
        family = HistogramMetricFamily(name, documentation, labels=labels)
        for row in rows:
            keys, (count, total, *cumulative) = row[: len(labels)], row[len(labels) :]
            pairs = [
                (floatToGoString(b), float(c or 0))
                for b, c in zip(DURATION_BUCKETS_S, cumulative, strict=True)
            ]
            pairs.append(("+Inf", float(count)))
            family.add_metric([str(k) for k in keys], pairs, float(total))
        return family


class LiveCollector(Collector):
    """What is asked of the broker and the disk at scrape time: workers answering a ping, free space."""

    def __init__(self, settings: Settings, workers_alive: int | None) -> None:
        self._settings = settings
        self._workers_alive = workers_alive

    def collect(self) -> Iterable[Metric]:
        broker = GaugeMetricFamily("segserve_broker_up", "1 when the broker answered this scrape.")
        broker.add_metric([], 0 if self._workers_alive is None else 1)
        yield broker
        workers = GaugeMetricFamily(
            "segserve_workers_alive", "Celery workers that answered a ping (1 s) at this scrape."
        )
        workers.add_metric([], self._workers_alive or 0)
        yield workers
        disk = GaugeMetricFamily(
            "segserve_data_dir_free_bytes", "Bytes free on the data directory's filesystem (unprivileged)."
        )
        disk.add_metric([], free_bytes(self._settings.resolved_data_dir))
        yield disk
        reserve = GaugeMetricFamily(
            "segserve_data_dir_reserve_bytes",
            "Free space kept for results: uploads that would cross it get 507.",
        )
        reserve.add_metric([], self._settings.min_free_disk_bytes)
        yield reserve


def scrape_registry(settings: Settings, workers_alive: int | None) -> CollectorRegistry:
    """A registry for one scrape: the database, the live checks and this process's upload counter."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(settings))
    registry.register(LiveCollector(settings, workers_alive))
    registry.register(UPLOAD_BYTES)
    return registry
