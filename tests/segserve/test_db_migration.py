"""An older database, made before jobs.priority and jobs.files_deleted_at existed, still starts: init_db adds
the columns (SQLite and PostgreSQL), the old rows read as routine with their files kept, and new jobs are made
and claimed as before."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from segserve import jobs, retention
from segserve.audit import query
from segserve.db import Job, JobPriority, get_engine, init_db, new_session
from tests.support.legacy_db import make_pre_priority_database
from tests.support.rows import job_row


@pytest.fixture
def empty_url(empty_db_url: str) -> str:
    return empty_db_url


def test_old_database_gains_the_priority_column(empty_url: str) -> None:
    make_pre_priority_database(empty_url)
    init_db(empty_url)
    init_db(empty_url)  # a second start finds the column and changes nothing
    with new_session(empty_url) as session:
        old = session.get(Job, "old1")
        assert old is not None and old.priority == JobPriority.routine.value
        session.add(job_row("new1", priority=JobPriority.stat))
        session.commit()
        assert jobs.claim(session, "new1", "w1", lease_s=60)
        new = session.get(Job, "new1")
        assert new is not None and new.priority == "stat" and new.status == "running"


def test_api_and_worker_migrating_at_once_both_start(empty_url: str) -> None:
    """Both processes call init_db at start; the one that loses the race must not fail."""
    make_pre_priority_database(empty_url)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            init_db(empty_url)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert "priority" in {c["name"] for c in inspect(get_engine(empty_url)).get_columns("jobs")}


def test_old_database_gains_files_deleted_at_and_old_jobs_expire(empty_url: str, tmp_path: Path) -> None:
    """The tombstone column is added as null, so an old finished job counts as having its files; the
    retention then finds it (by its finished_at) and tombstones it like any other."""
    old_id = make_pre_priority_database(empty_url)
    init_db(empty_url)
    assert "files_deleted_at" in {c["name"] for c in inspect(get_engine(empty_url)).get_columns("jobs")}
    jobs_dir = tmp_path / "jobs"
    (jobs_dir / old_id / "result").mkdir(parents=True)
    (jobs_dir / old_id / "result" / "labels.nii.gz").write_bytes(b"x")
    with new_session(empty_url) as session:
        old = session.get(Job, old_id)
        assert old is not None and old.files_deleted_at is None
        assert retention.expired_jobs(session, 3600, limit=10) == []  # it finished 30 s ago
        assert retention.expired_jobs(session, 10, limit=10) == [old_id]
        assert retention.delete_files(session, jobs_dir, old_id, by="retention") is not None
        assert retention.delete_files(session, jobs_dir, old_id, by="retention") is None  # once only
        session.expire_all()
        old = session.get(Job, old_id)
        assert old is not None and old.files_deleted_at is not None
        events = query(session, resource_id=old_id, action=retention.FILES_DELETED)
        assert [(e.key_id, e.detail["by"]) for e in events] == [(None, "retention")]
    assert not (jobs_dir / old_id).exists()
