"""Retention: deleting the files of jobs that finished more than SEGSERVE_RETENTION_DAYS ago.

Runs in every worker's main process (a thread beside the recovery loop and the intake sweep, started in
workers/tasks.py when the retention is set), so `segserve up` and any deployment with a worker run it with
no process of its own (Celery beat would need one). Several workers sweeping at once is safe: each deletion
is idempotent and its tombstone is one conditional UPDATE (segserve.retention), so every job gets one
tombstone and one audit event whichever worker wins.
"""

from __future__ import annotations

import logging
import threading

from segserve.config import Settings
from segserve.db import new_session
from segserve.retention import delete_files, expired_jobs

log = logging.getLogger(__name__)
BATCH = 200


def sweep(settings: Settings, stop: threading.Event | None = None) -> int:
    """Delete the files of every finished job past the retention, a batch at a time; returns how many
    tombstones this call set. A job whose files cannot be removed is logged and tried again next pass."""
    retention_s = settings.retention_s
    if retention_s is None:
        return 0
    deleted = 0
    tried: set[str] = set()
    with new_session(settings.resolved_database_url) as session:
        while stop is None or not stop.is_set():
            batch = [j for j in expired_jobs(session, retention_s, limit=BATCH) if j not in tried]
            if not batch:
                break
            for job_id in batch:
                tried.add(job_id)
                try:
                    if delete_files(
                        session,
                        settings.jobs_dir,
                        job_id,
                        by="retention",
                        detail={"retention_days": settings.retention_days},
                    ):
                        deleted += 1
                        log.info("job %s: files deleted (retention)", job_id)
                except OSError as exc:
                    session.rollback()
                    log.warning("job %s: files could not be deleted (%s); will retry", job_id, exc.strerror)
    return deleted


class RetentionLoop:
    """Runs `sweep` every SEGSERVE_RETENTION_INTERVAL_S in a daemon thread (the first pass at start)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segserve-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                sweep(self._settings, self._stop)
            except Exception:
                log.warning("retention pass failed; will retry", exc_info=True)
            if self._stop.wait(self._settings.retention_interval_s):
                return
