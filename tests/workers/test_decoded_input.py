"""The worker maps the input the API decoded (segserve.scans.decoded) and never decodes the upload again:
a job whose stored upload is damaged after validation still succeeds, with the labels and metrics of the
same job read from an intact upload; a job without a decoded form is read from its upload as before."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from segserve import jobs
from segserve.config import Settings
from segserve.db import Job, init_db, new_session
from segserve.scans.decoded import save_decoded
from segserve.scans.readers import read_image, read_labels
from segserve.storage import JobFiles
from tests.support.paths import WEIGHTS, require_shared
from tests.support.volumes import brain_crop
from workers.runner import run_job

MODEL = "brain-mri-structures"


def _queued_job(settings: Settings, job_id: str, image: Path, reference: Path, *, decoded: bool) -> JobFiles:
    """A queued job stored as POST /v1/jobs stores it: the upload, and (`decoded`) what validation read."""
    files = JobFiles(settings.jobs_dir, job_id)
    files.image_dir.mkdir(parents=True)
    files.reference_dir.mkdir(parents=True)
    shutil.copyfile(image, files.image_dir / "0000.nii.gz")
    shutil.copyfile(reference, files.reference_dir / "0000.nii.gz")
    volume = read_image([files.image_dir / "0000.nii.gz"])
    if decoded:
        save_decoded(volume, files.input_dir, "image")
        save_decoded(read_labels([files.reference_dir / "0000.nii.gz"]), files.input_dir, "reference")
    with new_session(settings.resolved_database_url) as session:
        session.add(
            jobs.build_job(
                job_id,
                model_id=MODEL,
                model_version="1.0.0",
                queue="cpu",
                input_format="nifti",
                input_files=["0000.nii.gz"],
                reference_files=["0000.nii.gz"],
                image_shape=list(volume.shape),
                image_spacing_mm=list(volume.spacing_mm),
                submitted_by="k",
            )
        )
        session.commit()
    return files


def test_worker_reads_the_decoded_input_not_the_upload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_shared()
    settings = Settings(data_dir=tmp_path / "data", models_dir=WEIGHTS)
    settings.data_dir.mkdir()
    init_db(settings.resolved_database_url)
    image, reference = brain_crop(tmp_path, size=40)
    kept = _queued_job(settings, "kept", image, reference, decoded=True)
    plain = _queued_job(settings, "plain", image, reference, decoded=False)
    # Damage the stored uploads after validation: decoding them now would fail the job (corrupt_image).
    for path in (kept.image_dir / "0000.nii.gz", kept.reference_dir / "0000.nii.gz"):
        path.write_bytes(path.read_bytes()[:200])

    with caplog.at_level(logging.INFO, logger="workers.inputs"):
        outcomes = [run_job(settings, job_id, "w1") for job_id in ("kept", "plain")]
    assert [o.status for o in outcomes] == ["succeeded", "succeeded"], outcomes
    lines = [r.getMessage() for r in caplog.records]
    assert "job kept: input mapped from its decoded copy (the upload is not decoded again)" in lines
    assert "job plain: no decoded copy of the input, decoding the upload" in lines

    results: list[Any] = [nib.load(files.labels) for files in (kept, plain)]
    np.testing.assert_array_equal(np.asarray(results[0].dataobj), np.asarray(results[1].dataobj))
    np.testing.assert_array_equal(results[0].affine, results[1].affine)
    assert results[0].header["sform_code"] == results[1].header["sform_code"]
    metrics = [json.loads(files.metrics.read_text()) for files in (kept, plain)]
    assert metrics[0] == metrics[1]
    with new_session(settings.resolved_database_url) as session:
        assert all(session.get(Job, j).status == "succeeded" for j in ("kept", "plain"))  # type: ignore[union-attr]
