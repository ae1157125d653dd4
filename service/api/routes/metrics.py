"""GET /metrics: Prometheus text format, for an admin API key or the metrics token.

A scrape sends `Authorization: Bearer <SEGSERVE_METRICS_TOKEN>` (Prometheus' `authorization` scrape
setting) or any admin API key; without either it gets 401, with another role's key 403.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from segserve.config import Settings
from service.api.deps import SessionDep, SettingsDep, current_key, presented_key, require
from service.metrics import scrape_registry
from workers.celery_app import app as celery_app

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])


def _authorize(request: Request, settings: Settings, session: SessionDep) -> None:
    """The metrics token, else an API key whose role may read metrics (401 / 403 as for every route)."""
    presented = presented_key(request)
    token = settings.metrics_token
    if presented and token and hmac.compare_digest(presented.encode(), token.encode()):
        return
    require("metrics:read")(current_key(request, session))


def _workers_alive() -> int | None:
    """Workers answering a broadcast ping within 1 s; None when the broker cannot be reached."""
    try:
        replies = celery_app.control.ping(timeout=1.0) or []
    except Exception as exc:
        log.warning("metrics: broker ping failed (%s)", type(exc).__name__)
        return None
    return len({name for reply in replies for name in reply})


@router.get("/metrics", summary="Prometheus metrics (admin key or SEGSERVE_METRICS_TOKEN)")
def metrics(request: Request, settings: SettingsDep, session: SessionDep) -> Response:
    _authorize(request, settings, session)
    session.close()  # the collector opens its own sessions; give this connection back before the ping
    registry = scrape_registry(settings, _workers_alive())
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
