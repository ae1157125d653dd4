"""State of the series received over DICOMweb (STOW-RS). As in segserve.jobs, every change is one
conditional UPDATE, so several API processes appending and several workers sweeping never both win:

    (first instance) --> open --quiet for quiet_s, claimed by one sweeper--> closing
    closing --series valid: the job row and this change commit in ONE transaction--> submitted (job_id)
    closing --series invalid, model unavailable--> failed (error_code, error)
    closing, its sweeper died (closing_at older than CLOSING_STALE_S) --claimed again--> closing

The job id is fixed when a series is claimed, so a sweeper that takes over a stalled close makes the same
job, never a second one. An instance that arrives once its series is no longer open starts a new
collection of that series (and, after its own quiet period, a new job).

Files: `<incoming_dir>/<id>/image/` while open (see service/dicomweb/collect.py), `<id>.closing/` while a
sweeper validates it, then the job's `input/` (workers/intake.py).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segserve.db import IncomingSeries, IntakeState, utcnow

#: A series that has been "closing" this long lost its sweeper (a crash mid-way) and is taken over.
CLOSING_STALE_S = 900.0


@dataclass(frozen=True)
class SeriesFacts:
    """What the first instance of a collection says about its series (UIDs as stored)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    series_number: int | None = None
    deidentified: bool = False
    patient: dict[str, str] = field(default_factory=dict)  # name, id, birth_date, accession_number
    original_uids: dict[str, str] = field(default_factory=dict)  # study, series (de-identified only)


def open_key(study_uid: str, series_uid: str, model_id: str) -> str:
    """The unique key of the open collection of (study, series, model)."""
    return hashlib.sha256("\0".join((study_uid, series_uid, model_id)).encode()).hexdigest()


def collection_dir(incoming_dir: Path, series_id: str) -> Path:
    """Where the instances of an open collection are linked (`<incoming_dir>/<id>/image/`)."""
    return incoming_dir / series_id / "image"


def open_collection(
    session: Session, facts: SeriesFacts, model_id: str, key_id: str, incoming_dir: Path
) -> IncomingSeries:
    """The open collection of (study, series, model), created with its directory when there is none.
    Commits. Two processes creating it at once: the unique open_key lets one win, the other reads it."""
    key = open_key(facts.study_uid, facts.series_uid, model_id)
    for _ in range(5):
        row = session.scalar(select(IncomingSeries).where(IncomingSeries.open_key == key))
        if row is not None:
            return row
        series_id = uuid.uuid4().hex
        collection_dir(incoming_dir, series_id).mkdir(parents=True)
        row = IncomingSeries(
            id=series_id,
            open_key=key,
            study_uid=facts.study_uid,
            series_uid=facts.series_uid,
            model_id=model_id,
            state=IntakeState.open.value,
            instance_count=0,
            submitted_by=key_id,
            modality=facts.modality[:16],
            series_number=facts.series_number,
            deidentified=facts.deidentified,
            patient=dict(facts.patient),
            original_uids=dict(facts.original_uids),
        )
        session.add(row)
        try:
            session.commit()
            return row
        except IntegrityError:
            session.rollback()
            shutil.rmtree(incoming_dir / series_id, ignore_errors=True)
    raise RuntimeError("could not open a collection for the series (too much contention)")


def touch(session: Session, series_id: str, added: int = 0) -> bool:
    """Record that instances arrived (restarting the quiet period); False when the collection is no longer
    open (a sweeper claimed it). Commits."""
    now = utcnow()
    result = session.execute(
        update(IncomingSeries)
        .where(IncomingSeries.id == series_id, IncomingSeries.state == IntakeState.open.value)
        .values(last_received_at=now, instance_count=IncomingSeries.instance_count + added)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def claim_quiet(session: Session, quiet_s: float, now: datetime | None = None) -> list[str]:
    """Claim every open collection quiet for `quiet_s` seconds, and every close whose sweeper stalled.
    Returns the ids this caller now owns (state closing, job id fixed). Commits."""
    now = now or utcnow()
    quiet_before = now - timedelta(seconds=quiet_s)
    stale_before = now - timedelta(seconds=CLOSING_STALE_S)
    candidates = session.scalars(
        select(IncomingSeries.id)
        .where(
            or_(
                and_(
                    IncomingSeries.state == IntakeState.open.value,
                    IncomingSeries.last_received_at < quiet_before,
                ),
                and_(
                    IncomingSeries.state == IntakeState.closing.value,
                    IncomingSeries.closing_at < stale_before,
                ),
            )
        )
        .order_by(IncomingSeries.last_received_at)
    ).all()
    claimed = []
    for series_id in candidates:
        opened = session.execute(
            update(IncomingSeries)
            .where(
                IncomingSeries.id == series_id,
                IncomingSeries.state == IntakeState.open.value,
                IncomingSeries.last_received_at < quiet_before,
            )
            .values(state=IntakeState.closing.value, closing_at=now, open_key=None, job_id=uuid.uuid4().hex)
        )
        taken = bool(opened.rowcount)  # type: ignore[attr-defined]
        if not taken:  # a stalled close: keep its job id, so the same job is made, never a second
            stale = session.execute(
                update(IncomingSeries)
                .where(
                    IncomingSeries.id == series_id,
                    IncomingSeries.state == IntakeState.closing.value,
                    IncomingSeries.closing_at < stale_before,
                )
                .values(closing_at=now)
            )
            taken = bool(stale.rowcount)  # type: ignore[attr-defined]
        session.commit()
        if taken:
            claimed.append(series_id)
    return claimed


def submitted_values(instance_count: int) -> dict[str, object]:
    """The UPDATE values of closing -> submitted (committed with the job row by the caller)."""
    return {"state": IntakeState.submitted.value, "closed_at": utcnow(), "instance_count": instance_count}


def mark_failed(session: Session, series_id: str, code: str, message: str) -> bool:
    """closing -> failed, with the reason (no patient data in it). Commits."""
    result = session.execute(
        update(IncomingSeries)
        .where(IncomingSeries.id == series_id, IncomingSeries.state == IntakeState.closing.value)
        .values(state=IntakeState.failed.value, closed_at=utcnow(), error=message, error_code=code)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
