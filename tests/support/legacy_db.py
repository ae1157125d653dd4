"""Databases as older releases made them, for the tests of init_db's additive migrations."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Column, MetaData, Table, insert, inspect

from segserve.db import Base, Job, get_engine, utcnow

# Columns of `jobs` added after the release before job priorities, in the order they came.
LATER_JOB_COLUMNS = ("priority", "files_deleted_at")
# Tables that release did not have and that refer to `jobs` (init_db creates them on the old database).
LATER_TABLES = ("job_stages",)


def make_pre_priority_database(
    url: str, *, job_id: str = "old1", model_id: str = "m", run_s: float = 30
) -> str:
    """Every table as the release before job priorities made it (jobs without LATER_JOB_COLUMNS), holding
    one succeeded job of `model_id` that ran `run_s` seconds. Returns that job's id."""
    old = MetaData()
    columns: list[Column[object]] = [
        c._copy() for c in Job.__table__.columns if c.name not in LATER_JOB_COLUMNS
    ]
    table = Table("jobs", old, *columns)
    engine = get_engine(url)
    old.create_all(engine)
    skipped = ("jobs", *LATER_TABLES)
    Base.metadata.create_all(engine, tables=[t for t in Base.metadata.sorted_tables if t.name not in skipped])
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(table).values(
                id=job_id,
                status="succeeded",
                progress=1.0,
                model_id=model_id,
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
                created_at=now - timedelta(seconds=run_s + 60),
                updated_at=now,
                started_at=now - timedelta(seconds=run_s + 30),
                finished_at=now - timedelta(seconds=30),
            )
        )
    assert not set(LATER_JOB_COLUMNS) & {c["name"] for c in inspect(engine).get_columns("jobs")}
    return job_id
