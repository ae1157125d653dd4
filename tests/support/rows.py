"""Job rows for tests that write the database directly (never published to a queue)."""

from __future__ import annotations

from typing import Any

from segserve import jobs
from segserve.db import Job


def job_row(job_id: str, **fields: Any) -> Job:
    """A queued job row (segserve.jobs.build_job) of a one-file NIfTI input on an 8^3, 1 mm grid, model "m";
    ``fields`` replace any of those defaults (model_id, image_shape, evaluation_id, priority, ...)."""
    defaults: dict[str, Any] = {
        "model_id": "m",
        "model_version": "1",
        "queue": "cpu",
        "input_format": "nifti",
        "input_files": ["0000.nii.gz"],
        "reference_files": [],
        "image_shape": [8, 8, 8],
        "image_spacing_mm": [1.0, 1.0, 1.0],
        "submitted_by": "k",
    }
    return jobs.build_job(job_id, **{**defaults, **fields})
