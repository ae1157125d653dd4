"""The worklist's query on a real database (SQLite and PostgreSQL) with more jobs than one page: filters by
status, review state and evaluation are applied in SQL before the limit, pages cover every match once, and
a job's state is its newest review."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from segserve.db import ApiKey, Job, JobStatus, Review, get_engine, init_db, new_session
from service.api.routes.worklist import MAX_LIMIT, WorklistFilter, worklist, worklist_page
from tests.conftest import fresh_postgres_database
from tests.support.rows import job_row

N_JOBS = MAX_LIMIT + 120  # more than the largest page
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    """A database of this module's own: the session's shared one is used by the stack tests."""
    with fresh_postgres_database("segserve_worklist") as url:
        yield url


def _expected_state(i: int) -> str:
    """Job i's review history, designed so that the newest review decides: the oldest jobs (beyond any
    first page) are accepted, some are rejected then accepted, some accepted then rejected."""
    if i < 40:
        return "accepted"
    if i % 7 == 0:
        return "rejected"
    if i % 11 == 0:
        return "accepted"
    return "unreviewed"


def _seed(session: Session) -> dict[str, dict[str, str | None]]:
    """N_JOBS jobs, oldest first (job i created at T0 + i minutes); every 5th made by an evaluation."""
    facts: dict[str, dict[str, str | None]] = {}
    for i in range(N_JOBS):
        job_id = f"{i:04d}" + uuid.uuid4().hex[:28]
        evaluation = "eval0001" if i % 5 == 0 else None
        job = job_row(
            job_id,
            model_id="brain-mri-structures",
            evaluation_id=evaluation,
            case_id=f"CASE_{i:03d}" if evaluation else None,
        )
        job.status = JobStatus.failed.value if i % 3 == 0 else JobStatus.succeeded.value
        job.created_at = T0 + timedelta(minutes=i)
        session.add(job)
        state = _expected_state(i)
        history = {
            "accepted": ["rejected", "accepted"] if i % 2 else ["accepted"],
            "rejected": ["accepted", "rejected"],
            "unreviewed": [],
        }[state]
        for n, decision in enumerate(history):
            session.add(
                Review(
                    id=uuid.uuid4().hex,
                    job_id=job_id,
                    decision=decision,
                    key_id="k",
                    created_at=T0 + timedelta(days=1, minutes=i, seconds=n),
                )
            )
        facts[job_id] = {"status": job.status, "review": state, "evaluation": evaluation}
    session.commit()
    return facts


@pytest.fixture(params=["sqlite", "postgresql"])
def seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Session, dict]]:
    url = (
        f"sqlite:///{tmp_path / 'w.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_db")
    )
    init_db(url)
    session = new_session(url)
    session.execute(sa.delete(Review))
    session.execute(sa.delete(Job))
    session.commit()
    try:
        yield session, _seed(session)
    finally:
        session.close()
        if request.param == "sqlite":
            get_engine(url).dispose()


def _all_pages(session: Session, where: WorklistFilter, limit: int) -> tuple[list[tuple[Job, str]], int]:
    rows: list[tuple[Job, str]] = []
    offset = 0
    while True:
        page, total = worklist_page(session, where, limit, offset)
        rows += page
        offset += limit
        if offset >= total:
            return rows, total


@pytest.mark.parametrize(
    "where",
    [
        WorklistFilter(),
        WorklistFilter(review="accepted"),
        WorklistFilter(review="rejected"),
        WorklistFilter(review="unreviewed", status=JobStatus.succeeded),
        WorklistFilter(status=JobStatus.failed, review="accepted"),
        WorklistFilter(evaluation_id="eval0001", review="accepted"),
    ],
)
def test_filters_run_before_the_limit(seeded: tuple[Session, dict], where: WorklistFilter) -> None:
    session, facts = seeded
    expected = {
        job_id
        for job_id, f in facts.items()
        if (where.status is None or f["status"] == where.status.value)
        and (where.review is None or f["review"] == where.review)
        and (where.evaluation_id is None or f["evaluation"] == where.evaluation_id)
    }
    rows, total = _all_pages(session, where, limit=37)
    ids = [job.id for job, _ in rows]
    assert total == len(expected) and len(ids) == len(set(ids)) and set(ids) == expected
    assert all(state == facts[job.id]["review"] for job, state in rows)
    assert ids == sorted(ids, reverse=True)  # newest first (ids start with the creation order)


def test_old_accepted_jobs_are_found_past_any_page_of_all_jobs(seeded: tuple[Session, dict]) -> None:
    session, facts = seeded
    first, total = worklist_page(session, WorklistFilter(review="accepted"), limit=MAX_LIMIT, offset=0)
    assert total == sum(f["review"] == "accepted" for f in facts.values()) > 40
    # The 40 oldest jobs are accepted; with the filter applied after a limit they were never listed.
    assert {f"{i:04d}" for i in range(40)} <= {job.id[:4] for job, _ in first}


def test_route_lists_evaluation_jobs_with_case_ids_and_links_the_next_page(
    seeded: tuple[Session, dict],
) -> None:
    session, facts = seeded
    key = ApiKey(id="k", role="reviewer")  # the route's own code does not read the key
    page = worklist(session, key, status=None, review="accepted", evaluation="eval0001", limit=5, offset=0)
    expected = sum(f["review"] == "accepted" and f["evaluation"] == "eval0001" for f in facts.values())
    assert page.total == expected > 5 and len(page.items) == 5
    assert all(
        i.case_id and i.case_id.startswith("CASE_") and i.evaluation_id == "eval0001" for i in page.items
    )
    assert page.next == "/v1/worklist?review=accepted&evaluation=eval0001&limit=5&offset=5"
    last = worklist(
        session, key, status=None, review="accepted", evaluation="eval0001", limit=5, offset=expected - 1
    )
    assert len(last.items) == 1 and last.next is None
