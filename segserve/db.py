"""Database tables and engine. SQLite by default, PostgreSQL in a multi-machine deployment.

The schema is created with `create_all` on start (`init_db`); both the API and the workers call it.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

# Re-exported (callers import them from here); they live in db_base so table modules avoid a cycle.
from segserve.db_base import Base as Base
from segserve.db_base import UTCDateTime as UTCDateTime
from segserve.db_base import utcnow as utcnow


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class JobPriority(enum.StrEnum):
    """How urgent a job is. A stat job starts before every queued routine job on its queue."""

    stat = "stat"
    routine = "routine"


class Role(enum.StrEnum):
    submitter = "submitter"
    reviewer = "reviewer"
    researcher = "researcher"
    admin = "admin"


class ApiKey(Base):
    """An API key. Only the sha256 of the secret is stored; `id` is the public key id used in logs."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Job(Base):
    """One scan through one model. Files live under `<data_dir>/jobs/<id>/` (see segserve.storage)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.queued.value)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    model_id: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    queue: Mapped[str] = mapped_column(String(20))
    # Added after the first release: init_db adds it to older databases (see _ADDITIVE_COLUMNS).
    priority: Mapped[str] = mapped_column(
        String(16), default=JobPriority.routine.value, server_default=JobPriority.routine.value
    )
    input_format: Mapped[str] = mapped_column(String(20))
    input_files: Mapped[list[str]] = mapped_column(JSON)
    reference_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    image_shape: Mapped[list[int]] = mapped_column(JSON)
    image_spacing_mm: Mapped[list[float]] = mapped_column(JSON)
    submitted_by: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    evaluation_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    case_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # When the job's files were deleted (retention or an admin's DELETE; segserve.retention). The row stays
    # as a tombstone. Added after the first release: init_db adds it to older databases.
    files_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def has_reference(self) -> bool:
        return bool(self.reference_files)


class Evaluation(Base):
    """A batch evaluation: a folder of predictions against references, or a dataset run through a model
    (one job per case). Outputs live under `<data_dir>/evaluations/<id>/`."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.queued.value)
    mode: Mapped[str] = mapped_column(String(16))  # "folders" or "dataset"
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    n_cases: Mapped[int] = mapped_column(Integer, default=0)
    submitted_by: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Review(Base):
    """A reviewer's decision on a job's labels. History is kept: the newest row is the job's review state.

    No foreign key to jobs: deleting a job must not fail on its reviews (they are then simply orphaned)."""

    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    decision: Mapped[str] = mapped_column(String(16))  # "accepted" or "rejected"
    comment: Mapped[str] = mapped_column(Text, default="")
    key_id: Mapped[str] = mapped_column(String(32))
    label_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class LabelVersion(Base):
    """A corrected label volume saved by a reviewer: `result/labels.v{version}.nii.gz`. Version 0 is the
    model's own result and has no row; it is never overwritten."""

    __tablename__ = "label_versions"
    __table_args__ = (UniqueConstraint("job_id", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(Text, default="")
    label_values: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Added for interaction sessions (segserve.interactions); init_db adds them to older databases, where
    # existing rows read None. label_names: {"<value>": name} of labels a reviewer added beyond the model
    # card's; provenance: how the version was made ({"session_id", "engine", "prompts"}).
    label_names: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class IntakeState(enum.StrEnum):
    open = "open"  # receiving instances
    closing = "closing"  # quiet for the quiet period; being turned into a job
    submitted = "submitted"  # the job exists (job_id)
    failed = "failed"  # the series could not become a job (error, error_code)


class IncomingSeries(Base):
    """DICOM instances received over STOW-RS for one (study, series, model), collected under
    `<data_dir>/incoming/<id>/image/` until none has arrived for the quiet period; then ONE job
    (see segserve.intake). `open_key` is set only while the collection is open and is unique, so there is
    at most one open collection per (study, series, model) whichever process receives the instances.
    `patient` and `original_uids` are patient data: the API shows them only to roles with phi:read."""

    __tablename__ = "incoming_series"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), index=True, default=IntakeState.open.value)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closing_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    submitted_by: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    deidentified: Mapped[bool] = mapped_column(Boolean, default=False)
    patient: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    original_uids: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)


class JobStage(Base):
    """How long one stage of a job's run took in a worker (seconds, wall clock), for the per-model stage
    histograms of GET /metrics. Stages: read (inputs and reference decoded and checked), load (the model's
    predictor, cached per worker process after the first job), predict, write (label NIfTI and, for DICOM
    input, the SEG), evaluate (metrics against a reference). One row per stage the attempt finished; rows
    go with their job (ON DELETE CASCADE)."""

    __tablename__ = "job_stages"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    seconds: Mapped[float] = mapped_column(Float)


class DeidUid(Base):
    """A UID that de-identification replaced, and the original it stands for, so results can be tied back
    to the source study. Replacements are derived deterministically (segserve.deid_uids), so writing the
    same row twice is harmless."""

    __tablename__ = "deid_uids"

    replacement: Mapped[str] = mapped_column(String(64), primary_key=True)
    original: Mapped[str] = mapped_column(String(64))
    original_study_uid: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyRecord(Base):
    """An Idempotency-Key (draft-ietf-httpapi-idempotency-key-header) sent by one API key, and what became
    of its first request (segserve.idempotency): `processing` while that request runs, `completed` with the
    answer to replay. `fingerprint` is the sha256 (hex) of the request's method, path and body content.
    A row counts until `expires_at` (end of the lock while processing, end of the TTL once completed);
    `token` identifies one claim, so a claim that was taken over cannot complete."""

    __tablename__ = "idempotency_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # "processing" or "completed"
    token: Mapped[str] = mapped_column(String(32))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    media_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_headers: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing on a lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_engines: list[Engine] = []


# Connections a process may hold at once: the API's request threads (anyio's default 40) each hold one for
# their request, uploads included; SQLAlchemy's default (5 + 10) made a burst of 20 uploads wait 30 s for a
# connection and fail. Past this, a request gets 503 database_busy (service/problems.py).
POOL_SIZE, POOL_MAX_OVERFLOW = 5, 35


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL per process."""
    pool = {"pool_size": POOL_SIZE, "max_overflow": POOL_MAX_OVERFLOW}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, **pool)
    _engines.append(engine)
    return engine


def _drop_inherited_connections() -> None:
    """In a forked child (Celery's prefork pool forks the worker's main process), start with empty pools.
    The parent's pooled connections are left open for the parent (close=False): one socket used by two
    processes interleaves their transactions, which PostgreSQL showed as "connection in transaction status
    INTRANS" in a pool child while the parent's intake sweep was mid-transaction."""
    for engine in _engines:
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_drop_inherited_connections)


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


# Columns added to existing tables after a release: (table, column, SQL type with its default). create_all
# makes missing tables only, so init_db adds these to a database made before them. Additive only: a column
# here must be nullable or carry a default, so that older rows stay valid and older code can still insert.
_ADDITIVE_COLUMNS: list[tuple[str, str, str]] = [
    ("jobs", "priority", "VARCHAR(16) NOT NULL DEFAULT 'routine'"),
    ("jobs", "files_deleted_at", "TIMESTAMP NULL"),
    ("label_versions", "label_names", "JSON NULL"),
    ("label_versions", "provenance", "JSON NULL"),
]


def _add_missing_columns(engine: Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for every column of _ADDITIVE_COLUMNS that the database lacks. The API
    and the workers may start together and both try: the loser's error is ignored once the column is
    there."""
    for table, column, ddl in _ADDITIVE_COLUMNS:
        if column in {c["name"] for c in inspect(engine).get_columns(table)}:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
        except DBAPIError:
            if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise


def init_db(url: str) -> None:
    """Create missing tables and add missing columns (see _ADDITIVE_COLUMNS). The API and the workers may
    start together on a database that lacks a table: PostgreSQL then refuses all but one CREATE TABLE
    (a duplicate type name), SQLite says the table already exists; the others look again and find it."""
    import segserve.audit
    import segserve.interactions  # noqa: F401

    engine = get_engine(url)
    for attempt in range(3):
        try:
            Base.metadata.create_all(engine)
            break
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    _add_missing_columns(engine)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def new_session(url: str) -> Session:
    return _session_factory(url)()
