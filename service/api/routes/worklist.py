"""The reviewers' worklist (`GET /v1/worklist`): jobs with their review state, newest first.

Every filter (status, review state, evaluation) is part of the SQL query, and so are the count and the page
bounds: a filter never runs over a truncated list, however many jobs there are. Jobs made by a dataset
evaluation are listed too (a reviewer may review them), with their dataset case id.

Only identifiers that are safe to display leave here: the random job id, the dataset case id (a dataset's
own pseudonymous file stem, e.g. `BRATS_001`), the model, times and states. Nothing read from an uploaded
file (DICOM patient attributes, file names) is stored on the job row in the first place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.orm import Session

from segserve.db import Job, JobStatus, Review
from service.api.deps import CanReadJobs, SessionDep

ReviewState = Literal["unreviewed", "accepted", "rejected"]
MAX_LIMIT = 500

router = APIRouter(prefix="/v1", tags=["viewer"])


def review_state_column() -> ColumnElement[str]:
    """The job's review state: the decision of its newest review, else 'unreviewed'. A correlated subquery
    (reviews.job_id is indexed), so it can be filtered on in SQL; ties on the time are broken by id, the
    same order as the review history (`service.api.routes.reviews`)."""
    newest = (
        select(Review.decision)
        .where(Review.job_id == Job.id)
        .order_by(Review.created_at.desc(), Review.id.desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )
    return func.coalesce(newest, literal("unreviewed"))


@dataclass(frozen=True)
class WorklistFilter:
    status: JobStatus | None = None
    review: ReviewState | None = None
    evaluation_id: str | None = None

    def conditions(self, state: ColumnElement[str]) -> list[ColumnElement[bool]]:
        """WHERE terms; `state` is the review state column the query selects."""
        terms: list[ColumnElement[bool]] = []
        if self.status is not None:
            terms.append(Job.status == self.status.value)
        if self.review is not None:
            terms.append(state == self.review)
        if self.evaluation_id is not None:
            terms.append(Job.evaluation_id == self.evaluation_id)
        return terms


def worklist_page(
    session: Session, where: WorklistFilter, limit: int, offset: int
) -> tuple[Sequence[tuple[Job, str]], int]:
    """One page of (job, review state), newest first, and the number of jobs that match `where`."""
    state = review_state_column()
    terms = where.conditions(state)
    total = session.scalar(select(func.count()).select_from(Job).where(*terms)) or 0
    query = select(Job, state).where(*terms).order_by(Job.created_at.desc(), Job.id)
    rows = session.execute(query.limit(limit).offset(offset))
    return [(job, str(review)) for job, review in rows], total


class WorklistItem(BaseModel):
    """What the worklist shows: no patient data, only job facts and the review state."""

    id: str
    case_id: str | None
    evaluation_id: str | None
    model: str
    status: str
    created_at: str
    has_reference: bool
    review: ReviewState


class Worklist(BaseModel):
    items: list[WorklistItem]
    total: int
    limit: int
    offset: int
    next: str | None


@router.get("/worklist", response_model=Worklist, summary="Jobs with their review state, newest first")
def worklist(
    session: SessionDep,
    _key: CanReadJobs,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
    review: Annotated[ReviewState | None, Query(description="Only jobs in this review state")] = None,
    evaluation: Annotated[str | None, Query(description="Only the case jobs of this evaluation")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Worklist:
    where = WorklistFilter(status=status, review=review, evaluation_id=evaluation)
    rows, total = worklist_page(session, where, limit, offset)
    items = [
        WorklistItem(
            id=job.id,
            case_id=job.case_id,
            evaluation_id=job.evaluation_id,
            model=job.model_id,
            status=job.status,
            created_at=job.created_at.isoformat(),
            has_reference=job.has_reference,
            review=state,  # type: ignore[arg-type]
        )
        for job, state in rows
    ]
    next_link = None
    if offset + limit < total:
        params = {"status": status.value if status else None, "review": review, "evaluation": evaluation}
        kept = {k: v for k, v in params.items() if v is not None}
        next_link = "/v1/worklist?" + urlencode({**kept, "limit": limit, "offset": offset + limit})
    return Worklist(items=items, total=total, limit=limit, offset=offset, next=next_link)
