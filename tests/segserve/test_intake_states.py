"""Intake state transitions against SQLite and PostgreSQL: one open collection per (study, series, model)
however many requests race, one sweeper per quiet series, no instance counted into a closed series, and a
stalled close taken over with the same job id."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import update

from segserve import intake
from segserve.db import IncomingSeries, IntakeState, init_db, new_session, utcnow

T = TypeVar("T")


@pytest.fixture
def facts() -> intake.SeriesFacts:
    """A series of its own: the PostgreSQL database is shared by the whole test session."""
    return intake.SeriesFacts(study_uid="1.2.3", series_uid=f"1.2.3.{uuid.uuid4().int}", modality="CT")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'intake.db'}" if request.param == "sqlite" else None
    url = url or request.getfixturevalue("postgres_url")
    init_db(url)
    yield url


def _race(n: int, action: Callable[[], T]) -> list[T]:
    """Run `action` in `n` threads released together; returns their results."""
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(action())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _age(url: str, series_id: str, seconds: float, **extra: object) -> None:
    with new_session(url) as s:
        s.execute(
            update(IncomingSeries)
            .where(IncomingSeries.id == series_id)
            .values(last_received_at=utcnow() - timedelta(seconds=seconds), **extra)
        )
        s.commit()


def test_concurrent_first_instances_open_one_collection(
    db_url: str, facts: intake.SeriesFacts, tmp_path: Path
) -> None:
    def open_one() -> str:
        with new_session(db_url) as s:
            return intake.open_collection(s, facts, "m", "key", tmp_path / "incoming").id

    ids = _race(6, open_one)
    assert len(set(ids)) == 1
    assert [p.name for p in (tmp_path / "incoming").iterdir()] == [ids[0]]  # losers removed their dirs
    with new_session(db_url) as s:
        other_model = intake.open_collection(s, facts, "other", "key", tmp_path / "incoming").id
    assert other_model != ids[0]


def test_one_sweeper_claims_a_quiet_series_and_later_instances_go_to_a_new_one(
    db_url: str, facts: intake.SeriesFacts, tmp_path: Path
) -> None:
    with new_session(db_url) as s:
        first = intake.open_collection(s, facts, "m", "key", tmp_path)
        assert intake.touch(s, first.id, added=2)
        assert first.id not in intake.claim_quiet(s, quiet_s=60)  # not quiet yet
    _age(db_url, first.id, 120)

    def claim() -> list[str]:
        with new_session(db_url) as s:
            return intake.claim_quiet(s, quiet_s=60)

    claims = _race(5, claim)
    assert sum(c.count(first.id) for c in claims) == 1  # (other tests' series may be claimed too)
    with new_session(db_url) as s:
        row = s.get(IncomingSeries, first.id)
        assert row is not None and row.state == IntakeState.closing.value
        assert row.open_key is None and row.job_id and row.instance_count == 2
        assert not intake.touch(s, first.id, added=1)  # closed: the instance is not counted here
        second = intake.open_collection(s, facts, "m", "key", tmp_path)
    assert second.id != first.id and second.state == IntakeState.open.value


def test_a_stalled_close_is_taken_over_with_the_same_job_id(
    db_url: str, facts: intake.SeriesFacts, tmp_path: Path
) -> None:
    with new_session(db_url) as s:
        row = intake.open_collection(s, facts, "m", "key", tmp_path)
    _age(db_url, row.id, 120)
    with new_session(db_url) as s:
        assert row.id in intake.claim_quiet(s, quiet_s=60)
        job_id = s.get(IncomingSeries, row.id).job_id  # type: ignore[union-attr]
        assert row.id not in intake.claim_quiet(s, quiet_s=60)  # a live close is left alone
    stalled = utcnow() - timedelta(seconds=intake.CLOSING_STALE_S + 5)
    _age(db_url, row.id, 120, closing_at=stalled)
    with new_session(db_url) as s:
        assert row.id in intake.claim_quiet(s, quiet_s=60)
        again = s.get(IncomingSeries, row.id)
        assert again is not None and again.job_id == job_id
        assert intake.mark_failed(s, row.id, "gantry_tilt", "tilted")
        assert not intake.mark_failed(s, row.id, "x", "y")  # only from closing
