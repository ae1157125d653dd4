"""Audit middleware: records every write under /v1 and every read of a job's or an evaluation's
sub-resources (images, results, metrics, labels, reviews, outputs) with the key id, the route, the
resource id, the client address and the status code. Polling a job's status is not recorded."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from segserve.audit import record
from segserve.config import get_settings
from segserve.db import new_session

log = logging.getLogger(__name__)
_RESOURCES = (("job_id", "job"), ("evaluation_id", "evaluation"), ("key_id", "api_key"))


def _audited(method: str, route_path: str) -> bool:
    if not route_path.startswith("/v1/") or route_path.startswith("/v1/audit"):
        return False
    if method not in ("GET", "HEAD"):
        return True
    for param, _ in _RESOURCES[:2]:
        marker = "{" + param + "}"
        if marker in route_path and not route_path.endswith(marker):
            return True  # a sub-resource: /v1/jobs/{job_id}/result, /v1/evaluations/{evaluation_id}/{name}
    return False


def _write(request: Request, route_path: str, status_code: int) -> None:
    params = request.path_params
    resource_type, resource_id = "api", None
    for param, kind in _RESOURCES:
        if param in params:
            resource_type, resource_id = kind, str(params[param])
            break
    created = getattr(request.state, "created_resource", None)  # (type, id) set by a handler that creates
    if created is not None:
        resource_type, resource_id = created
    detail = {k: str(v) for k, v in request.query_params.items() if k in ("version", "format")}
    with new_session(get_settings().resolved_database_url) as session:
        record(
            session,
            key_id=getattr(request.state, "key_id", None),
            action=f"{request.method} {route_path}",
            resource_type=resource_type,
            resource_id=resource_id,
            client_address=request.client.host if request.client else None,
            status_code=status_code,
            detail=detail,
        )


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def _audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        route_path = getattr(route, "path", None)
        if route_path and _audited(request.method, route_path):
            try:
                await run_in_threadpool(_write, request, route_path, response.status_code)
            except Exception:  # never lose the answer to an audit failure, but say so loudly
                log.exception("could not write the audit event for %s %s", request.method, route_path)
        return response
