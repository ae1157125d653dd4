"""The audit log: who (key id) did what to which resource, when, and from which address.

Append-only: rows are only ever inserted, and database triggers (SQLite and PostgreSQL, defined with the
table below) refuse UPDATE and DELETE on it, so not even a bug in this code can rewrite
history. Entries never carry patient names or IDs: the resource is a job or evaluation id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DDL, JSON, BigInteger, Integer, String, event, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from segserve.db_base import Base, UTCDateTime, utcnow


# The audit log's rows (segserve.audit writes and reads them). Append-only: triggers refuse UPDATE/DELETE.
class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
]
_POSTGRES_TRIGGER = [
    "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END; $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events",
    "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
]
for _statement in _SQLITE_TRIGGERS:
    event.listen(AuditEvent.__table__, "after_create", DDL(_statement).execute_if(dialect="sqlite"))
for _statement in _POSTGRES_TRIGGER:
    event.listen(AuditEvent.__table__, "after_create", DDL(_statement).execute_if(dialect="postgresql"))


__all__ = ["AuditEvent", "query", "record"]


def record(
    session: Session,
    *,
    key_id: str | None,
    action: str,
    resource_type: str,
    resource_id: str | None,
    client_address: str | None,
    status_code: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one event and commit it."""
    session.add(
        AuditEvent(
            key_id=key_id,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            client_address=client_address,
            status_code=status_code,
            detail=detail or {},
        )
    )
    session.commit()


def query(
    session: Session,
    *,
    resource_id: str | None = None,
    key_id: str | None = None,
    action: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[AuditEvent]:
    """Newest first, filtered; page with `before_id` (the smallest id of the previous page)."""
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if resource_id is not None:
        stmt = stmt.where(AuditEvent.resource_id == resource_id)
    if key_id is not None:
        stmt = stmt.where(AuditEvent.key_id == key_id)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if before_id is not None:
        stmt = stmt.where(AuditEvent.id < before_id)
    return list(session.scalars(stmt))
