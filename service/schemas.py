"""Response schemas. Separate from the rows: storage paths and key hashes never leave the service."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from segserve.db import ApiKey, Job


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


class JobPublic(BaseModel):
    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: float = Field(ge=0.0, le=1.0)
    model: ModelRef
    queue: str
    input: InputInfo
    has_reference: bool
    cancel_requested: bool
    attempts: int
    error: JobError | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks

    @classmethod
    def from_row(cls, job: Job) -> JobPublic:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            progress=job.progress,
            model=ModelRef(id=job.model_id, version=job.model_version),
            queue=job.queue,
            input=InputInfo(format=job.input_format, shape=job.image_shape, spacing_mm=job.image_spacing_mm),
            has_reference=job.has_reference,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            error=JobError(code=job.error_code, message=job.error) if job.error else None,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
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
