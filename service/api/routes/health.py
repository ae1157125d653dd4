"""/healthz (liveness, no auth) and /readyz (database, broker and a worker reachable)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from segserve.config import Settings
from segserve.db import get_engine
from service.api.deps import SettingsDep
from workers.celery_app import app as celery_app

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_all(settings: Settings) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        with get_engine(settings.resolved_database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = {"ok": True}
    except Exception as exc:
        checks["broker"] = {"ok": False, "error": type(exc).__name__}
    if checks["broker"]["ok"]:
        try:
            replies = celery_app.control.ping(timeout=1.0) or []
            workers = sorted(name for reply in replies for name in reply)
            checks["workers"] = {"ok": bool(workers), "count": len(workers), "names": workers}
        except Exception as exc:
            checks["workers"] = {"ok": False, "error": type(exc).__name__}
    else:
        checks["workers"] = {"ok": False, "error": "broker unreachable"}
    return checks


@router.get("/readyz", summary="Readiness: database, broker and at least one worker reachable")
async def readyz(settings: SettingsDep) -> JSONResponse:
    checks = await run_in_threadpool(_check_all, settings)
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )
