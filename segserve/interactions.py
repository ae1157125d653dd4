"""Interaction sessions (semi-automatic segmentation, issue #14): their table, states, files and the Redis
names that the API and the interactive workers share.

A session belongs to one succeeded job. The API stores the reviewer's prompts, in voxel indices of the
job's image (axis order of the image array, I, J, K), as an ordered JSON list; an interactive worker turns
the list into a mask (a pure function of the list, so undo = drop the last prompt) and writes it to
`<jobs_dir>/<job>/interactions/<session>/mask.nii.gz` (uint8 0/1 on the job's result grid). Committing
puts the mask into a new label version (segserve.db.LabelVersion); the model's result is never changed.
"""

from __future__ import annotations

import enum
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Integer, String, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from segserve.db_base import Base, UTCDateTime, utcnow
from segserve.storage import JobFiles


class SessionStatus(enum.StrEnum):
    open = "open"  # takes prompts
    committed = "committed"  # its mask became a label version (committed_version)
    closed = "closed"  # closed by the reviewer without a version
    expired = "expired"  # unused for longer than the idle TTL (Settings.interactive_ttl_s)


class InteractionSession(Base):
    """One reviewer's interaction with one job's image. `prompts` is the ordered list of prompt documents
    (models.interactive.codec: {"type": "click", "point": [i, j, k], "foreground": true}, boxes and painted
    slices likewise, voxel indices); `mask_prompts` is the list the stored mask was computed from, so a
    commit can tell whether the mask is current. `target_label`/`target_name`: the structure the mask is
    meant for (an existing label value, or a new value with the name the reviewer gave), optional until
    the commit. No foreign key to jobs, as for reviews: deleting a job must not fail on its sessions."""

    __tablename__ = "interaction_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    key_id: Mapped[str] = mapped_column(String(32))
    engine: Mapped[str] = mapped_column(String(100))
    target_label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    target_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    prompts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    mask_prompts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=SessionStatus.open.value)
    # Bumped by every change of `prompts` (set_prompts): two prompts sent at once cannot both build on the
    # same list and lose one of them.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    committed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


def session_dir(jobs_dir: Path, job_id: str, session_id: str) -> Path:
    """Where a session's files live: inside the job's folder, so deleting the job's files removes them."""
    return JobFiles(jobs_dir, job_id).root / "interactions" / session_id


def mask_path(jobs_dir: Path, job_id: str, session_id: str) -> Path:
    return session_dir(jobs_dir, job_id, session_id) / "mask.nii.gz"


def touch(row: InteractionSession, ttl_s: float) -> None:
    """Mark the session used now: its idle expiry moves to now + ttl_s."""
    now = utcnow()
    row.last_used_at = now
    row.expires_at = now + timedelta(seconds=ttl_s)


def set_prompts(
    session: Session, row: InteractionSession, prompts: list[dict[str, Any]], ttl_s: float
) -> bool:
    """Replace the prompt list of an open session, if nobody changed the session since `row` was read
    (same revision, still open); marks it used (see `touch`). False, and nothing changed, otherwise."""
    now = utcnow()
    changed = session.execute(
        update(InteractionSession)
        .where(
            InteractionSession.id == row.id,
            InteractionSession.revision == row.revision,
            InteractionSession.status == SessionStatus.open.value,
        )
        .values(
            prompts=prompts,
            revision=row.revision + 1,
            last_used_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    session.commit()
    session.refresh(row)
    return bool(changed.rowcount == 1)  # type: ignore[attr-defined]


def expire_if_idle(session: Session, row: InteractionSession, jobs_dir: Path) -> bool:
    """Mark an open session whose idle time ran out as expired (committed here) and delete its files.
    True when the session is (now) expired."""
    if row.status == SessionStatus.expired.value:
        return True
    if row.status != SessionStatus.open.value or row.expires_at > utcnow():
        return False
    end(session, row, SessionStatus.expired, jobs_dir)
    return True


def end(session: Session, row: InteractionSession, status: SessionStatus, jobs_dir: Path) -> None:
    """Leave the open state for `status` (committed, closed, expired) and delete the session's files. The
    interactive workers drop the session's prepared image at their next sweep (workers/interactive.py)."""
    row.status = status.value
    session.commit()
    shutil.rmtree(session_dir(jobs_dir, row.job_id, row.id), ignore_errors=True)


# --- Redis names (every one carries Settings.broker_key_prefix) ------------------------------------------

REPLY_TTL_S = 120  # an answer nobody waited for (the API timed out) goes away by itself
WORKER_ALIVE_TTL_S = 15  # an interactive worker refreshes its mark every few seconds


def reply_key(prefix: str, request_id: str) -> str:
    """The Redis list that one prompt's answer is pushed to (the API waits on it with BLPOP)."""
    return f"{prefix}segserve-interactive:reply:{request_id}"


def alive_key(prefix: str) -> str:
    """Set (with a short expiry) while at least one interactive worker runs."""
    return f"{prefix}segserve-interactive:alive"


def redis_client_url(broker_url: str) -> str:
    """The broker URL in the form redis-py reads: kombu's `redis+socket:///path` is `unix:///path`."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url
