"""Celery tasks and worker lifecycle hooks. Tasks are thin: they take a job id and call the runner."""

from __future__ import annotations

import logging
import socket
import threading

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from segserve.config import get_settings
from segserve.db import init_db, new_session
from workers import evaluations, interactive, shutdown
from workers.celery_app import FINISH_EVALUATION, INTERACT, RUN_EVALUATION, RUN_JOB, app
from workers.intake import IntakeLoop
from workers.recovery import RecoveryLoop
from workers.retention import RetentionLoop
from workers.runner import HANDED_BACK, run_job

log = logging.getLogger(__name__)
_recovery: RecoveryLoop | None = None
_intake: IntakeLoop | None = None
_retention: RetentionLoop | None = None
_alive_stop = threading.Event()


@app.task(
    name=RUN_JOB,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, RedisConnectionError),
    retry_backoff=5,
    max_retries=5,
)
def run_job_task(self: Task, job_id: str) -> str:
    """Run one job. Only transient infrastructure errors are retried; job errors end on the job."""
    settings = get_settings()
    worker = f"{self.request.hostname or socket.gethostname()}:{self.request.id}"
    outcome = run_job(settings, job_id, worker)
    if outcome.status == HANDED_BACK:
        # The worker is stopping and the job is queued again in the database: put the message back on the
        # broker (kombu restores it to its priority's list) for another worker, without waiting for a lease.
        raise Reject("worker shutting down: job handed back", requeue=True)
    if outcome.evaluation_id is not None:
        with new_session(settings.resolved_database_url) as session:
            evaluations.maybe_finish(app, session, outcome.evaluation_id)
    return outcome.status


_TRANSIENT = (OperationalError, RedisConnectionError)


@app.task(
    name=RUN_EVALUATION, acks_late=True, reject_on_worker_lost=True, autoretry_for=_TRANSIENT, max_retries=5
)
def run_evaluation_task(evaluation_id: str) -> str:
    """First step of a batch evaluation: evaluate folders, or create the dataset's case jobs."""
    return evaluations.run_evaluation(app, get_settings(), evaluation_id)


@app.task(
    name=FINISH_EVALUATION,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=_TRANSIENT,
    max_retries=5,
)
def finish_evaluation_task(evaluation_id: str) -> str:
    """Last step of a dataset evaluation: metrics over the finished case jobs, and the outputs."""
    return evaluations.finish_evaluation(get_settings(), evaluation_id)


@app.task(name=INTERACT, acks_late=False, ignore_result=True, soft_time_limit=120, time_limit=150)
def interact_task(session_id: str, request_id: str) -> str:
    """One prompt of an interaction session: the mask for the session's prompts, answered on the request's
    reply list. Acknowledged on receipt: a click lost with its worker is not worth re-running (the API
    has answered 503 by then); the reviewer clicks again."""
    return interactive.interact(get_settings(), session_id, request_id)


@worker_process_init.connect
def _init_process(**_: object) -> None:
    # Process-wide torch settings belong to the worker, not the model library.
    import torch

    from models.cpu import cpu_flags, select_cpu_path
    from models.predictor import set_cpu_path
    from workers.malloc import release_large_blocks

    release_large_blocks()
    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    # Decided once per process from this machine's CPU; each model then keeps fp32 unless its own
    # calibration passes (models/calibration.py).
    path = select_cpu_path(settings.cpu_precision, cpu_flags(), settings.device)
    set_cpu_path(path)
    log.info("cpu inference path: %s", path.reason)
    init_db(settings.resolved_database_url)
    shutdown.install_pool_process_handler()


@worker_shutting_down.connect
def _hand_back_jobs(**_: object) -> None:
    # In the main process, inside Celery's SIGTERM/SIGINT/SIGQUIT handler, before it waits for the tasks.
    shutdown.signal_pool()


@worker_ready.connect
def _start_recovery(sender: object = None, **_: object) -> None:
    global _recovery, _intake, _retention
    shutdown.watch_pool(getattr(sender, "pool", None))  # the sender is the worker's consumer
    settings = get_settings()
    init_db(settings.resolved_database_url)
    if interactive.ROLE["interactive"]:  # clicks only: the job workers run the loops below
        threading.Thread(
            target=interactive.keep_alive, args=(settings, _alive_stop), name="interactive-alive", daemon=True
        ).start()
        return
    _recovery = RecoveryLoop(app, settings)
    _recovery.start()
    _intake = IntakeLoop(app, settings)  # DICOMweb series that have gone quiet become jobs
    _intake.start()
    if settings.retention_s is not None:  # files of jobs finished longer ago than the retention are deleted
        log.info(
            "retention: files of finished jobs are deleted %g days after they finished",
            settings.retention_days,
        )
        _retention = RetentionLoop(settings)
        _retention.start()


@worker_shutdown.connect
def _stop_recovery(**_: object) -> None:
    _alive_stop.set()
    if _recovery is not None:
        _recovery.stop()
    if _intake is not None:
        _intake.stop()
    if _retention is not None:
        _retention.stop()
