"""Place in the queue and the estimated start and finish (segserve.queue_wait), against SQLite and
PostgreSQL rows."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from segserve.db import Job, new_session, utcnow
from segserve.queue_wait import first_start, queue_wait, queued_count, run_times

T0 = utcnow().replace(microsecond=0)


@pytest.fixture
def url(db_url: str) -> str:
    return db_url


def _job(
    job_id: str,
    *,
    model: str = "m",
    status: str = "queued",
    priority: str = "routine",
    queue: str = "cpu",
    created_s: float = 0.0,
    started_s: float | None = None,
    finished_s: float | None = None,
    key: str = "k",
) -> Job:
    def at(seconds: float | None) -> datetime | None:
        return None if seconds is None else T0 + timedelta(seconds=seconds)

    created = at(created_s)
    assert created is not None
    return Job(
        id=job_id,
        status=status,
        priority=priority,
        model_id=model,
        model_version="1",
        queue=queue,
        input_format="nifti",
        input_files=["0000.nii.gz"],
        image_shape=[2, 2, 2],
        image_spacing_mm=[1, 1, 1],
        submitted_by=key,
        created_at=created,
        started_at=at(started_s),
        finished_at=at(finished_s),
    )


def _add(url: str, *rows: Job) -> None:
    with new_session(url) as session:
        session.add_all(rows)
        session.commit()


def _wait(url: str, job_id: str, now: datetime) -> tuple[int, int, float | None, float | None]:
    with new_session(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        wait = queue_wait(session, job, runs=20, now=now)
    assert wait is not None
    if wait.estimate is None:
        return wait.position, wait.ahead, None, None
    start = (wait.estimate.start - now).total_seconds()
    return wait.position, wait.ahead, start, (wait.estimate.finish - now).total_seconds()


def test_stat_jobs_come_first_then_submission_order(url: str) -> None:
    _add(
        url,
        _job("r1", created_s=1),
        _job("r2", created_s=2),
        _job("s1", priority="stat", created_s=3),
        _job("r3", created_s=4),
        _job("s2", priority="stat", created_s=5),
        _job("g1", queue="gpu", created_s=0),  # another queue: never ahead
        _job("run", status="running", created_s=0, started_s=0),
    )
    now = T0 + timedelta(seconds=10)
    places = {j: _wait(url, j, now)[:2] for j in ("s1", "s2", "r1", "r2", "r3", "g1")}
    assert places == {"s1": (1, 0), "s2": (2, 1), "r1": (3, 2), "r2": (4, 3), "r3": (5, 4), "g1": (1, 0)}
    with new_session(url) as session:
        running = session.get(Job, "run")
        assert running is not None and queue_wait(session, running, runs=20) is None


def test_no_history_gives_a_place_but_no_estimate(url: str) -> None:
    _add(url, _job("a", created_s=1), _job("b", created_s=2))
    assert _wait(url, "b", T0 + timedelta(seconds=5)) == (2, 1, None, None)


def test_estimate_from_median_run_times(url: str) -> None:
    _add(
        url,
        # history: model m ran 10, 20 and 30 s (median 20); model n ran 100 s once
        _job("h1", status="succeeded", created_s=-500, started_s=-400, finished_s=-390),
        _job("h2", status="succeeded", created_s=-500, started_s=-300, finished_s=-280),
        _job("h3", status="succeeded", created_s=-500, started_s=-200, finished_s=-170),
        _job("h4", model="n", status="succeeded", created_s=-500, started_s=-150, finished_s=-50),
        _job("hf", status="failed", created_s=-500, started_s=-600, finished_s=-1),  # not counted
        # now: one m job running for 5 s (15 s left), a stat n job and a routine m job queued
        _job("run", status="running", created_s=-10, started_s=-5),
        _job("s1", model="n", priority="stat", created_s=-1),
        _job("r1", created_s=-2),
    )
    with new_session(url) as session:
        times = run_times(session, {"m", "n", "unknown"}, runs=20)
    assert {m: (t.median_s, t.runs) for m, t in times.items()} == {"m": (20.0, 3), "n": (100.0, 1)}
    assert _wait(url, "s1", T0) == (1, 0, 15.0, 115.0)
    assert _wait(url, "r1", T0) == (2, 1, 115.0, 135.0)


def test_running_jobs_count_as_slots_and_overdue_ones_as_done(url: str) -> None:
    _add(
        url,
        _job("h1", status="succeeded", created_s=-500, started_s=-100, finished_s=-60),  # 40 s
        _job("run1", status="running", created_s=-90, started_s=-80),  # overdue: 0 s left
        _job("run2", status="running", created_s=-90, started_s=-10),  # 30 s left
        _job("a", created_s=-5),
        _job("b", created_s=-4),
    )
    # slots 2: a starts after (0 + 30) / 2 s; b after (0 + 30 + 40) / 2 s
    assert _wait(url, "a", T0) == (1, 0, 15.0, 55.0)
    assert _wait(url, "b", T0) == (2, 1, 35.0, 75.0)


def test_a_keys_queued_count_and_first_start(url: str) -> None:
    _add(
        url,
        _job("h1", status="succeeded", created_s=-500, started_s=-100, finished_s=-90),  # 10 s
        _job("other", created_s=-9, key="x"),
        _job("mine1", created_s=-8, key="k"),
        _job("mine2", created_s=-7, key="k"),
        _job("done", status="succeeded", created_s=-8, started_s=-300, finished_s=-290, key="k"),
    )
    with new_session(url) as session:
        assert queued_count(session, "k") == 2 and queued_count(session, "nobody") == 0
        start = first_start(session, "k", runs=20, now=T0)
        assert first_start(session, "nobody", runs=20, now=T0) is None
    assert start is not None and (start - T0).total_seconds() == 10.0  # behind "other"'s 10 s
