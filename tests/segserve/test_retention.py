"""Which jobs the retention takes, and that a deletion is one tombstone and one audit event however many
callers race for it (real SQLite and PostgreSQL, real files)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from segserve import retention
from segserve.audit import query
from segserve.db import Evaluation, Job, JobStatus, new_session, utcnow
from tests.support.rows import job_row

DAY_S = 86400.0


@pytest.fixture
def url(db_url: str) -> str:
    return db_url


def _job(url: str, jobs_dir: Path, job_id: str, status: JobStatus, finished_days_ago: float | None) -> None:
    """A job row in `status` with finished_at that many days back (also for unfinished statuses, so that
    only the status can keep them), and a file in its directory."""
    with new_session(url) as session:
        row = job_row(job_id, evaluation_id="ev1" if job_id.startswith("case") else None)
        row.status = status.value
        if finished_days_ago is not None:
            row.finished_at = utcnow() - timedelta(days=finished_days_ago)
        session.add(row)
        session.commit()
    (jobs_dir / job_id / "input" / "image").mkdir(parents=True)
    (jobs_dir / job_id / "input" / "image" / "0000.nii.gz").write_bytes(b"scan")


def test_only_finished_jobs_past_the_retention_are_taken(url: str, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    _job(url, jobs_dir, "old-ok", JobStatus.succeeded, 10)
    _job(url, jobs_dir, "old-failed", JobStatus.failed, 9)
    _job(url, jobs_dir, "old-cancelled", JobStatus.cancelled, 8)
    _job(url, jobs_dir, "recent", JobStatus.succeeded, 0.5)
    _job(url, jobs_dir, "running", JobStatus.running, 10)
    _job(url, jobs_dir, "queued", JobStatus.queued, 10)
    _job(url, jobs_dir, "case1", JobStatus.succeeded, 10)  # its evaluation is still running
    with new_session(url) as session:
        session.add(Evaluation(id="ev1", status="running", mode="dataset", params={}, submitted_by="k"))
        session.commit()
        assert retention.expired_jobs(session, DAY_S, limit=10) == ["old-ok", "old-failed", "old-cancelled"]
        assert retention.expired_jobs(session, DAY_S, limit=2) == ["old-ok", "old-failed"]
        for unfinished in ("running", "queued"):
            assert retention.delete_files(session, jobs_dir, unfinished, by="admin") is None
            assert (jobs_dir / unfinished / "input" / "image" / "0000.nii.gz").exists()
        assert retention.delete_files(session, jobs_dir, "old-ok", by="retention") is not None
        assert retention.expired_jobs(session, DAY_S, limit=10) == ["old-failed", "old-cancelled"]
        evaluation = session.get(Evaluation, "ev1")
        assert evaluation is not None
        evaluation.status = "succeeded"
        session.commit()
        assert "case1" in retention.expired_jobs(session, DAY_S, limit=10)
    assert not (jobs_dir / "old-ok").exists()
    assert (jobs_dir / "recent" / "input" / "image" / "0000.nii.gz").exists()


def test_racing_deletions_leave_one_tombstone_and_one_event(url: str, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    _job(url, jobs_dir, "old", JobStatus.succeeded, 3)
    for n in range(200):  # enough files that the removals overlap
        (jobs_dir / "old" / "input" / "image" / f"{n:04d}.dcm").write_bytes(b"x" * 64)
    won: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def delete() -> None:
        try:
            with new_session(url) as session:
                start.wait()
                won.append(retention.delete_files(session, jobs_dir, "old", by="retention"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(w is not None for w in won) == 1
    assert not (jobs_dir / "old").exists()
    with new_session(url) as session:
        job = session.get(Job, "old")
        assert job is not None and job.files_deleted_at is not None and job.status == "succeeded"
        assert len(query(session, resource_id="old", action=retention.FILES_DELETED)) == 1
