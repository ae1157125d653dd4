"""The /metrics database collector against SQLite and PostgreSQL: rows with known timestamps give the
expected queue depths, status counts, histogram buckets and failure counts, in valid exposition format."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from segserve.config import Settings
from segserve.db import IncomingSeries, Job, init_db, new_session, utcnow
from service.metrics import scrape_registry


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    init_db(url)
    yield url


def _job(job_id: str, status: str, t0: datetime, **values: object) -> Job:
    return Job(
        id=job_id,
        status=status,
        model_id=str(values.pop("model")),
        model_version="1",
        queue=str(values.pop("queue", "cpu")),
        input_format="nifti",
        input_files=["0000.nii.gz"],
        image_shape=[2, 2, 2],
        image_spacing_mm=[1, 1, 1],
        submitted_by="k",
        created_at=t0,
        **values,
    )


def _samples(url: str, tmp_path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    settings = Settings(data_dir=tmp_path, database_url=url)
    text = generate_latest(scrape_registry(settings, workers_alive=2)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_collector_reads_the_database(db_url: str, tmp_path: Path) -> None:
    t0 = utcnow() - timedelta(hours=1)
    prefix = uuid.uuid4().hex[:8]  # the PostgreSQL database is shared by the session: ids of our own
    m = f"m-{prefix}"  # and a model of our own, whose series are this test's alone
    s = timedelta(seconds=1)
    with new_session(db_url) as session:
        session.add_all(
            [
                _job(f"{prefix}a", "succeeded", t0, model=m, started_at=t0 + 2 * s, finished_at=t0 + 12 * s),
                _job(
                    f"{prefix}b",
                    "failed",
                    t0,
                    model=m,
                    started_at=t0 + 40 * s,
                    finished_at=t0 + 100 * s,
                    error_code="disk_full",
                ),
                _job(f"{prefix}c", "queued", t0, model=m),
                _job(f"{prefix}d", "queued", t0, queue="gpu", model="other"),
                _job(f"{prefix}e", "cancelled", t0, model=m, finished_at=t0 + 3 * s),
                IncomingSeries(
                    id=f"{prefix}s1",
                    study_uid="1",
                    series_uid="2",
                    model_id="m",
                    state="open",
                    submitted_by="k",
                ),
                IncomingSeries(
                    id=f"{prefix}s2",
                    study_uid="1",
                    series_uid="3",
                    model_id="m",
                    state="failed",
                    submitted_by="k",
                ),
            ]
        )
        session.commit()
    got = _samples(db_url, tmp_path)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("segserve_database_up") == 1
    assert value("segserve_workers_alive") == 2 and value("segserve_broker_up") == 1
    if db_url.startswith("sqlite"):  # a database of this test alone: exact totals
        assert value("segserve_queue_depth", queue="cpu", priority="routine") == 1
        assert value("segserve_queue_depth", queue="gpu", priority="routine") == 1
        assert value("segserve_jobs", status="queued") == 2
        assert value("segserve_jobs", status="succeeded") == 1
        assert value("segserve_jobs", status="running") == 0
        assert value("segserve_intake_series", state="open") == 1
        assert value("segserve_intake_series", state="submitted") == 0
    assert value("segserve_job_failures_total", code="disk_full", model=m) == 1
    # Queue wait: a waited 2 s, b 40 s (c, d, e never started).
    wait = "segserve_job_queue_wait_seconds"
    assert value(f"{wait}_count", model=m) == 2
    assert value(f"{wait}_sum", model=m) == pytest.approx(42, abs=0.01)
    assert value(f"{wait}_bucket", model=m, le="1.0") == 0
    assert value(f"{wait}_bucket", model=m, le="2.5") == 1
    assert value(f"{wait}_bucket", model=m, le="30.0") == 1
    assert value(f"{wait}_bucket", model=m, le="60.0") == 2
    assert value(f"{wait}_bucket", model=m, le="+Inf") == 2
    # Run time per final status: a 10 s, b 60 s.
    run = "segserve_job_run_seconds"
    assert value(f"{run}_sum", model=m, status="succeeded") == pytest.approx(10, abs=0.01)
    assert value(f"{run}_bucket", model=m, status="succeeded", le="5.0") == 0
    assert value(f"{run}_bucket", model=m, status="succeeded", le="10.0") == 1
    assert value(f"{run}_bucket", model=m, status="failed", le="30.0") == 0
    assert value(f"{run}_bucket", model=m, status="failed", le="60.0") == 1
    # Whole duration includes the cancelled-while-queued job (3 s), which has no run time.
    duration = "segserve_job_duration_seconds"
    assert value(f"{duration}_count", model=m, status="cancelled") == 1
    assert value(f"{duration}_sum", model=m, status="failed") == pytest.approx(100, abs=0.01)
    assert ("segserve_job_run_seconds_count", (("model", m), ("status", "cancelled"))) not in got
