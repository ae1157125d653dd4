"""Response schemas. Separate from the rows: storage paths and key hashes never leave the service."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from segserve.db import ApiKey, Job
from segserve.queue_wait import QueueWait


class JobError(BaseModel):
    code: str | None
    message: str


class ModelRef(BaseModel):
    id: str
    version: str


class InputInfo(BaseModel):
    format: str
    shape: list[int] = Field(description="Voxel grid (I, J, K) of the scan as read.")
    spacing_mm: list[float]


class JobLinks(BaseModel):
    self: str
    result: str
    metrics: str | None


class WaitBasis(BaseModel):
    method: str = Field(description="How the estimate is made, in words.")
    run_time_s: float = Field(description="Median run time of this job's model, seconds.")
    runs: int = Field(description="How many recent succeeded runs of the model the median is over.")
    slots: int = Field(description="Jobs running on the queue now, at least 1 (taken as the worker slots).")


class Waiting(BaseModel):
    position: int = Field(description="Place in the job's queue; 1 = next to start (stat before routine).")
    ahead: int = Field(description="Queued jobs that start before this one.")
    estimated_start: datetime | None = Field(description="Null when the model has no succeeded run yet.")
    estimated_finish: datetime | None
    basis: WaitBasis | None

    @classmethod
    def from_wait(cls, wait: QueueWait) -> Waiting:
        estimate = wait.estimate
        return cls(
            position=wait.position,
            ahead=wait.ahead,
            estimated_start=estimate.start if estimate else None,
            estimated_finish=estimate.finish if estimate else None,
            basis=WaitBasis(
                method=estimate.method,
                run_time_s=round(estimate.run_time.median_s, 3),
                runs=estimate.run_time.runs,
                slots=estimate.slots,
            )
            if estimate
            else None,
        )


class JobPublic(BaseModel):
    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: float = Field(ge=0.0, le=1.0)
    model: ModelRef
    queue: str
    priority: str = Field(description="stat or routine; stat jobs start before queued routine jobs")
    waiting: Waiting | None = Field(
        default=None, description="While queued, in GET /v1/jobs/{id} only: place in the queue and estimate."
    )
    input: InputInfo
    has_reference: bool
    cancel_requested: bool
    attempts: int
    error: JobError | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    files_deleted_at: datetime | None = Field(
        default=None,
        description="When the job's files were deleted (retention or an admin's DELETE): its file routes "
        "then answer 410 files_deleted. Null while they are kept.",
    )
    links: JobLinks

    @classmethod
    def from_row(cls, job: Job, wait: QueueWait | None = None) -> JobPublic:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            progress=job.progress,
            model=ModelRef(id=job.model_id, version=job.model_version),
            queue=job.queue,
            priority=job.priority,
            waiting=Waiting.from_wait(wait) if wait is not None else None,
            input=InputInfo(format=job.input_format, shape=job.image_shape, spacing_mm=job.image_spacing_mm),
            has_reference=job.has_reference,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            error=JobError(code=job.error_code, message=job.error) if job.error else None,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            files_deleted_at=job.files_deleted_at,
            links=JobLinks(
                self=base,
                result=f"{base}/result",
                metrics=f"{base}/metrics" if job.has_reference else None,
            ),
        )


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int
    next: str | None


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(pattern="^(submitter|reviewer|researcher|admin)$")


class KeyPublic(BaseModel):
    id: str
    name: str
    role: str
    created_at: datetime
    revoked: bool

    @classmethod
    def from_row(cls, key: ApiKey) -> KeyPublic:
        return cls(
            id=key.id,
            name=key.name,
            role=key.role,
            created_at=key.created_at,
            revoked=key.revoked_at is not None,
        )


class KeyCreated(KeyPublic):
    key: str = Field(description="The secret. Shown once; store it now.")
