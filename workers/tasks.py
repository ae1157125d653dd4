"""Celery tasks and worker lifecycle hooks. Tasks are thin: they take a job id and call the runner."""

from __future__ import annotations

import logging
import socket

from celery import Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from segserve.config import get_settings
from segserve.db import init_db
from workers.celery_app import RUN_JOB, app
from workers.recovery import RecoveryLoop
from workers.runner import run_job

log = logging.getLogger(__name__)
_recovery: RecoveryLoop | None = None


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
    worker = f"{self.request.hostname or socket.gethostname()}:{self.request.id}"
    return run_job(get_settings(), job_id, worker).status


@worker_process_init.connect
def _init_process(**_: object) -> None:
    # Process-wide torch settings belong to the worker, not the model library.
    import torch

    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    init_db(settings.resolved_database_url)


@worker_ready.connect
def _start_recovery(**_: object) -> None:
    global _recovery
    settings = get_settings()
    init_db(settings.resolved_database_url)
    _recovery = RecoveryLoop(app, settings)
    _recovery.start()


@worker_shutdown.connect
def _stop_recovery(**_: object) -> None:
    if _recovery is not None:
        _recovery.stop()
