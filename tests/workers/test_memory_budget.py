"""The worker's memory budget: a job whose estimated peak is over it fails at once, naming the sizes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segserve import jobs
from segserve.config import Settings
from segserve.db import Job, init_db, new_session
from segserve.storage import JobFiles
from tests.support.paths import WEIGHTS, require_shared
from workers.runner import run_job

MODEL = "brain-mri-structures"


def _queued_job(settings: Settings, shape: tuple[int, int, int]) -> str:
    init_db(settings.resolved_database_url)
    files = JobFiles(settings.jobs_dir, "j1")
    files.image_dir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.int16), np.eye(4)), files.image_dir / "scan.nii.gz")
    with new_session(settings.resolved_database_url) as session:
        session.add(
            jobs.build_job(
                "j1",
                model_id=MODEL,
                model_version="1.0.0",
                queue="cpu",
                input_format="nifti",
                input_files=["scan.nii.gz"],
                reference_files=[],
                image_shape=list(shape),
                image_spacing_mm=[1.0, 1.0, 1.0],
                submitted_by="k",
            )
        )
        session.commit()
    return "j1"


@pytest.mark.parametrize(("budget_mb", "fits"), [(1024, False), (32768, True)])
def test_job_over_the_budget_fails_at_once_naming_sizes(tmp_path: Path, budget_mb: int, fits: bool) -> None:
    require_shared()
    settings = Settings(data_dir=tmp_path, models_dir=WEIGHTS, worker_memory_mb=budget_mb)
    job_id = _queued_job(settings, (40, 48, 36))
    outcome = run_job(settings, job_id, "w1")
    with new_session(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        if fits:
            assert job.status == "succeeded", job.error
            return
        assert (job.status, job.error_code) == ("failed", "insufficient_worker_memory")
        assert outcome.status == "failed"
        # names the input's grid and bytes, the estimate and the worker's budget with its source
        assert job.error is not None
        for part in ("40x48x36", "GiB", "1.0 GiB (SEGSERVE_WORKER_MEMORY_MB)", MODEL):
            assert part in job.error, job.error
