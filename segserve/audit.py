"""The audit log: who (key id) did what to which resource, when, and from which address.

Append-only: rows are only ever inserted, and database triggers (SQLite and PostgreSQL, defined with the
table in :mod:`segserve.db`) refuse UPDATE and DELETE on it, so not even a bug in this code can rewrite
history. Entries never carry patient names or IDs: the resource is a job or evaluation id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from segserve.db import AuditEvent

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
