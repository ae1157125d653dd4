"""A finished job's outputs: GET /v1/jobs/{id}/result (NIfTI labels, a label version, the lesion instance
volume, or a DICOM SEG) and GET /v1/jobs/{id}/metrics (JSON or CSV)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from evaluation.report import to_csv
from segserve.config import Settings
from segserve.db import Job
from segserve.dicom.seg import SegUnavailable
from segserve.scans.seg_export import seg_result_path
from segserve.storage import JobFiles
from service.api.deps import CanReadJobs, SessionDep, SettingsDep
from service.api.lookup import job_with_files, require_succeeded
from service.api.routes.lesions import instances_response, no_lesions
from service.files import csv_attachment, volume_response
from service.problems import Problem

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get(
    "/{job_id}/result",
    summary="The label volume (.nii.gz) on the scan's grid, or a DICOM SEG with ?format=dicom-seg",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}, "application/dicom": {}}}, 409: {}, 422: {}},
)
def get_result(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _key: CanReadJobs,
    version: Annotated[
        int | None, Query(ge=0, description="A label version (GET .../labels/versions); 0 is the model's")
    ] = None,
    format: Annotated[
        Literal["nifti", "dicom-seg", "instances"],
        Query(
            description="nifti (.nii.gz, default), dicom-seg (a DICOM SEG; DICOM inputs only) or instances "
            "(the lesion instance volume, ids 1..N, for models with lesion labels)"
        ),
    ] = "nifti",
    instances: Annotated[
        bool, Query(description="with format=dicom-seg: one segment per lesion instance (lesion models)")
    ] = False,
) -> Response:
    job = job_with_files(session, job_id)
    require_succeeded(job)
    if instances and format != "dicom-seg":
        raise Problem(
            400,
            "instances=true goes with format=dicom-seg; the instance volume as NIfTI is format=instances",
            code="bad_format",
        )
    if format == "dicom-seg":
        return _seg_response(job, settings, version, instances)
    if format == "instances":
        return instances_response(request, job, settings, version)
    path = JobFiles(settings.jobs_dir, job.id).labels_version(version or 0)
    if not path.exists():
        if version:
            raise Problem(404, f"job has no label version {version}", code="label_version_not_found")
        raise Problem(404, "the result file is missing from storage", code="result_missing")
    suffix = f"_v{version}" if version else ""
    return volume_response(request, path, f"{job.id}_labels{suffix}.nii.gz")


def _seg_response(job: Job, settings: Settings, version: int | None, instances: bool) -> FileResponse:
    if version:
        raise Problem(
            422, "a DICOM SEG is made for the model's result only (version 0)", code="seg_version_unsupported"
        )
    files = JobFiles(settings.jobs_dir, job.id)
    if instances and not files.lesions.exists():
        raise no_lesions(job)
    try:
        path = seg_result_path(files.instances_seg if instances else files.seg)
    except SegUnavailable as exc:
        if exc.code == "seg_not_available" and job.input_format != "dicom":
            raise Problem(
                422,
                f"a DICOM SEG needs a DICOM input series; this job's input was {job.input_format}",
                code="seg_needs_dicom_input",
            ) from None
        raise Problem(422, str(exc), code=exc.code) from None
    name = f"{job.id}_instances_seg.dcm" if instances else f"{job.id}_seg.dcm"
    return FileResponse(path, media_type="application/dicom", filename=name)


@router.get(
    "/{job_id}/metrics",
    summary="Per-structure metrics against the reference (JSON, or CSV with ?format=csv)",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def get_metrics(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    _key: CanReadJobs,
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv")] = "json",
) -> Response:
    job = job_with_files(session, job_id)
    if not job.has_reference:
        raise Problem(
            404, "this job was submitted without a reference; it has no metrics", code="no_reference"
        )
    require_succeeded(job)
    path = JobFiles(settings.jobs_dir, job.id).metrics
    if not path.exists():
        raise Problem(404, "the metrics file is missing from storage", code="metrics_missing")
    payload = json.loads(path.read_text(encoding="utf-8"))
    if format == "csv":
        return csv_attachment(to_csv(payload), f"{job.id}_metrics.csv")
    payload["job_id"] = job.id
    payload["model"] = {"id": job.model_id, "version": job.model_version}
    return JSONResponse(payload)
