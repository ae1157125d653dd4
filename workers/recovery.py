"""Finding jobs that lost their message or their worker, and publishing them again.

Every message is only a job id and the run is guarded by `jobs.claim`, so publishing a job twice is
harmless: the second delivery finds it claimed or finished and does nothing.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from segserve import jobs
from segserve.config import Settings
from segserve.db import new_session
from workers import evaluations
from workers.celery_app import send_run_job

log = logging.getLogger(__name__)


def requeue_abandoned(celery_app: Celery, settings: Settings, *, include_queued: bool) -> int:
    """Publish again every job whose worker died (lease expired); with include_queued, also every queued
    job (after a broker restart the queue itself may be gone). Each keeps its priority. Returns how many
    were published."""
    count = 0
    with new_session(settings.resolved_database_url) as session:
        for job in jobs.abandoned(session, include_queued=include_queued):
            if job.cancel_requested:
                jobs.cancel_abandoned_request(session, job.id)
                continue
            send_run_job(celery_app, job.id, job.queue, job.priority)
            jobs.mark_enqueued(session, job.id)
            count += 1
            log.info("job %s: published again (was %s)", job.id, job.status)
        count += evaluations.recover(celery_app, session, include_queued=include_queued)
    return count


class RecoveryLoop:
    """Runs `requeue_abandoned` at start (queued jobs included) and then every interval."""

    def __init__(self, celery_app: Celery, settings: Settings) -> None:
        self._app = celery_app
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segserve-recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        first = True
        while True:
            try:
                requeue_abandoned(self._app, self._settings, include_queued=first)
                first = False
            except Exception:
                log.warning("recovery pass failed; will retry", exc_info=True)
            if self._stop.wait(self._settings.recovery_interval_s):
                return
