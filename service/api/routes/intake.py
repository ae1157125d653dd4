"""/v1/intake: the series received over DICOMweb (STOW-RS), their state, and the job each became.

Patient attributes (name, ID, birth date, accession number, as stored: empty when de-identified) and, for
de-identified series, the original Study / Series Instance UIDs are shown only to roles with `phi:read`
(and each such answer is recorded in the audit log); for other roles the `patient` and `original_uids`
keys are left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from segserve.audit import record
from segserve.db import ApiKey, IncomingSeries, IntakeState
from segserve.security import allowed
from service.api.deps import CanReadJobs, SessionDep
from service.problems import Problem

router = APIRouter(prefix="/v1/intake", tags=["intake"])
PHI_FIELDS = ("patient", "original_uids")


class IntakeError(BaseModel):
    code: str | None
    message: str


class IncomingSeriesPublic(BaseModel):
    id: str
    state: str = Field(description="open, closing, submitted (job made) or failed (see error)")
    model: str
    study_instance_uid: str = Field(description="as stored (the replacement UID when de-identified)")
    series_instance_uid: str
    modality: str
    series_number: int | None
    instance_count: int
    deidentified: bool
    first_received_at: datetime
    last_received_at: datetime
    closed_at: datetime | None
    job_id: str | None = Field(description="the job this series became (state submitted)")
    job: str | None = Field(description="link to the job")
    error: IntakeError | None
    patient: dict[str, str] | None = Field(
        default=None, description="name, id, birth_date, accession_number; roles with phi:read only"
    )
    original_uids: dict[str, str] | None = Field(
        default=None, description="source study and series UIDs of a de-identified series; phi:read only"
    )

    @classmethod
    def from_row(cls, row: IncomingSeries) -> IncomingSeriesPublic:
        job_id = row.job_id if row.state == IntakeState.submitted.value else None
        return cls(
            id=row.id,
            state=row.state,
            model=row.model_id,
            study_instance_uid=row.study_uid,
            series_instance_uid=row.series_uid,
            modality=row.modality,
            series_number=row.series_number,
            instance_count=row.instance_count,
            deidentified=row.deidentified,
            first_received_at=row.first_received_at,
            last_received_at=row.last_received_at,
            closed_at=row.closed_at,
            job_id=job_id,
            job=f"/v1/jobs/{job_id}" if job_id else None,
            error=IntakeError(code=row.error_code, message=row.error) if row.error else None,
            patient=dict(row.patient or {}),
            original_uids=dict(row.original_uids or {}),
        )


def _public(row: IncomingSeries, key: ApiKey) -> dict[str, Any]:
    exclude = set() if allowed(key.role, "phi:read") else set(PHI_FIELDS)
    return IncomingSeriesPublic.from_row(row).model_dump(mode="json", exclude=exclude)


def _audit_phi(session: Session, request: Request, key: ApiKey, rows: list[IncomingSeries]) -> None:
    """Patient data shown to a phi:read role is an access to record (which series, by whom)."""
    if not rows or not allowed(key.role, "phi:read"):
        return
    record(
        session,
        key_id=key.id,
        action=f"GET {request.scope['route'].path}",
        resource_type="incoming_series",
        resource_id=rows[0].id if len(rows) == 1 else None,
        client_address=request.client.host if request.client else None,
        status_code=200,
        detail={"phi": True, "series": [r.id for r in rows[:200]]},
    )


@router.get("", summary="Series received over STOW-RS, newest first")
def list_intake(
    request: Request,
    session: SessionDep,
    key: CanReadJobs,
    state: Annotated[IntakeState | None, Query(description="only series in this state")] = None,
    job_id: Annotated[str | None, Query(description="the series that became this job")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    query = select(IncomingSeries)
    count = select(func.count()).select_from(IncomingSeries)
    if state is not None:
        query, count = (
            query.where(IncomingSeries.state == state.value),
            count.where(IncomingSeries.state == state.value),
        )
    if job_id is not None:
        query, count = (
            query.where(IncomingSeries.job_id == job_id),
            count.where(IncomingSeries.job_id == job_id),
        )
    total = session.scalar(count) or 0
    rows = session.scalars(
        query.order_by(IncomingSeries.first_received_at.desc(), IncomingSeries.id).limit(limit).offset(offset)
    ).all()
    _audit_phi(session, request, key, list(rows))
    return {"items": [_public(r, key) for r in rows], "total": total, "limit": limit, "offset": offset}


@router.get("/{series_id}", summary="One received series")
def get_intake(series_id: str, request: Request, session: SessionDep, key: CanReadJobs) -> dict[str, Any]:
    row = session.get(IncomingSeries, series_id)
    if row is None:
        raise Problem(404, f"no received series with id '{series_id}'", code="intake_not_found")
    _audit_phi(session, request, key, [row])
    return _public(row, key)
