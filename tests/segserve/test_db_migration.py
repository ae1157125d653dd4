"""An older database, made before jobs.priority existed, still starts: init_db adds the column (SQLite and
PostgreSQL), the old rows read as routine, and new jobs are made and claimed as before."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, Table, insert, inspect

from segserve import jobs
from segserve.db import Base, Job, JobPriority, get_engine, init_db, new_session, utcnow
from tests.conftest import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
    else:
        with fresh_postgres_database("segserve_migration") as url:
            yield url


def _make_old_jobs_table(url: str) -> None:
    """A database as the release before priorities made it: every table, jobs without `priority` and with
    one finished job in it."""
    old = MetaData()
    columns: list[Column[object]] = [c._copy() for c in Job.__table__.columns if c.name != "priority"]
    table = Table("jobs", old, *columns)
    engine = get_engine(url)
    Base.metadata.create_all(engine, tables=[t for t in Base.metadata.sorted_tables if t.name != "jobs"])
    old.create_all(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(table).values(
                id="old1",
                status="succeeded",
                progress=1.0,
                model_id="m",
                model_version="1",
                queue="cpu",
                input_format="nifti",
                input_files=["0000.nii.gz"],
                reference_files=[],
                image_shape=[2, 2, 2],
                image_spacing_mm=[1.0, 1.0, 1.0],
                submitted_by="k",
                attempts=1,
                cancel_requested=False,
                created_at=now,
                updated_at=now,
            )
        )
    assert "priority" not in {c["name"] for c in inspect(engine).get_columns("jobs")}


def test_old_database_gains_the_priority_column(empty_url: str) -> None:
    _make_old_jobs_table(empty_url)
    init_db(empty_url)
    init_db(empty_url)  # a second start finds the column and changes nothing
    with new_session(empty_url) as session:
        old = session.get(Job, "old1")
        assert old is not None and old.priority == JobPriority.routine.value
        session.add(
            jobs.build_job(
                "new1",
                model_id="m",
                model_version="1",
                queue="cpu",
                input_format="nifti",
                input_files=["0000.nii.gz"],
                reference_files=[],
                image_shape=[2, 2, 2],
                image_spacing_mm=[1.0, 1.0, 1.0],
                submitted_by="k",
                priority=JobPriority.stat,
            )
        )
        session.commit()
        assert jobs.claim(session, "new1", "w1", lease_s=60)
        new = session.get(Job, "new1")
        assert new is not None and new.priority == "stat" and new.status == "running"


def test_api_and_worker_migrating_at_once_both_start(empty_url: str) -> None:
    """Both processes call init_db at start; the one that loses the race must not fail."""
    _make_old_jobs_table(empty_url)
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
