"""The worker's intake sweep over real parts: instances placed by the API's own code into a real data
directory, a real database (SQLite and PostgreSQL), job ids published to a real Redis. Several sweepers at
once make exactly one job of a quiet series, exactly as POST /v1/jobs would; a series the reader refuses is
recorded as failed with the reason, its files removed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import redis
from celery import Celery
from sqlalchemy import func, select

from models.install import install_models
from models.testing.make_bundle import write_unet_bundle
from segserve.audit import AuditEvent
from segserve.config import Settings
from segserve.db import IncomingSeries, IntakeState, Job, init_db, new_session
from segserve.storage import JobFiles
from service.dicomweb.collect import place
from service.dicomweb.instances import Received, inspect_part
from service.dicomweb.multipart import StowPart
from tests.conftest import redis_db
from tests.support.dicomweb import ct_series, to_bytes
from workers.celery_app import broker_lists, configure
from workers.intake import sweep

MODEL = "ct_sweep_test"


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    url = f"sqlite:///{tmp_path / 'sweep.db'}" if request.param == "sqlite" else None
    url = url or request.getfixturevalue("postgres_url")
    init_db(url)
    models_dir = tmp_path / "models"
    install_models(write_unet_bundle(tmp_path / "src" / MODEL), models_dir)
    prefix = f"segserve-sweep-{uuid.uuid4().hex[:8]}:"
    yield Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        redis_url=redis_db(9),
        broker_key_prefix=prefix,
        models_dir=models_dir,
        dicomweb_quiet_s=0.2,
    )
    client = redis.Redis.from_url(redis_db(9))
    stale = list(client.scan_iter(f"{prefix}*"))
    if stale:
        client.delete(*stale)


def _receive(settings: Settings, key_id: str, tilt_mm_per_slice: float = 0.0) -> list[Received]:
    """Store the 3 CT slices (a new series) through the API's own checks and placement."""
    staging = settings.staging_dir / uuid.uuid4().hex
    staging.mkdir(parents=True)
    received = []
    for n, ds in enumerate(ct_series(tilt_mm_per_slice=tilt_mm_per_slice), start=1):
        path = staging / f"{n:05d}.part"
        path.write_bytes(to_bytes(ds))
        checked = inspect_part(StowPart(n, path, "application/dicom"), study_uid=None, deid_key=None)
        assert isinstance(checked, Received), checked
        received.append(checked)
    placement = place(settings, received, MODEL, key_id)
    assert len(placement.stored) == 3 and len(placement.series_ids) == 1
    return received


def _sweep_concurrently(settings: Settings, n: int = 3) -> list[int]:
    celery_app = configure(Celery(f"sweep-{uuid.uuid4().hex[:6]}"), settings)
    barrier = threading.Barrier(n)
    closed: list[int] = []

    def run() -> None:
        barrier.wait()
        closed.append(sweep(celery_app, settings))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return closed


def test_concurrent_sweeps_make_exactly_one_queued_and_published_job(settings: Settings) -> None:
    settings.staging_dir.mkdir(parents=True)
    key_id = uuid.uuid4().hex[:12]  # the database may be shared with other tests: select by this
    received = _receive(settings, key_id)
    time.sleep(0.3)  # quiet period
    assert sum(_sweep_concurrently(settings)) >= 1  # (other tests' series in a shared database too)
    with new_session(settings.resolved_database_url) as s:
        (row,) = s.scalars(select(IncomingSeries).where(IncomingSeries.submitted_by == key_id)).all()
        assert row.state == IntakeState.submitted.value and row.instance_count == 3
        assert s.scalar(select(func.count()).select_from(Job).where(Job.submitted_by == key_id)) == 1
        job = s.get(Job, row.job_id)
        assert job is not None and job.status == "queued" and job.enqueued_at is not None
        assert job.input_format == "dicom" and job.image_shape == [512, 512, 3]
        assert job.model_id == MODEL and job.reference_files == []
        actions = set(s.scalars(select(AuditEvent.action).where(AuditEvent.resource_id == job.id)))
    assert actions == {"intake.job_created"}
    files = JobFiles(settings.jobs_dir, job.id)
    assert [p.name for p in files.image_paths(job.input_files) if p.is_file()] == job.input_files
    assert sorted(job.input_files) == job.input_files and len(job.input_files) == 3
    assert list(settings.incoming_dir.iterdir()) == []  # nothing left behind
    broker = redis.Redis.from_url(redis_db(9))
    queued = [broker.llen(f"{settings.broker_key_prefix}{name}") for name in broker_lists("cpu")]
    assert queued == [0, 1]  # one routine message
    stored = [pydicom.dcmread(p, stop_before_pixels=True) for p in files.image_paths(job.input_files)]
    assert {r.sop_instance_uid for r in received} == {str(ds.SOPInstanceUID) for ds in stored}


def test_a_series_the_reader_refuses_is_failed_with_its_reason(settings: Settings) -> None:
    settings.staging_dir.mkdir(parents=True)
    key_id = uuid.uuid4().hex[:12]
    _receive(settings, key_id, tilt_mm_per_slice=0.5)
    time.sleep(0.3)
    assert sum(_sweep_concurrently(settings, 2)) >= 1
    with new_session(settings.resolved_database_url) as s:
        (row,) = s.scalars(select(IncomingSeries).where(IncomingSeries.submitted_by == key_id)).all()
        assert s.scalar(select(func.count()).select_from(Job).where(Job.submitted_by == key_id)) == 0
    assert row.state == IntakeState.failed.value and row.error_code == "gantry_tilt"
    assert row.error and "tilt" in row.error
    assert list(settings.incoming_dir.iterdir()) == []
    assert not (settings.jobs_dir / str(row.job_id)).exists()
