"""/v1/audit: the append-only audit log (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from segserve.audit import query
from service.api.deps import CanAdminKeys, SessionDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", summary="Audit events, newest first (admin)")
def list_events(
    session: SessionDep,
    _key: CanAdminKeys,
    resource_id: Annotated[str | None, Query(description="a job or evaluation id")] = None,
    key_id: Annotated[str | None, Query()] = None,
    action: Annotated[str | None, Query(description='e.g. "GET /v1/jobs/{job_id}/result"')] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(description="page: events older than this id")] = None,
) -> dict[str, Any]:
    events = query(
        session, resource_id=resource_id, key_id=key_id, action=action, limit=limit, before_id=before_id
    )
    items = [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "key_id": e.key_id,
            "action": e.action,
            "resource_type": e.resource_type,
            "resource_id": e.resource_id,
            "client_address": e.client_address,
            "status_code": e.status_code,
            "detail": e.detail,
        }
        for e in events
    ]
    return {"items": items, "next_before_id": items[-1]["id"] if len(items) == limit else None}
