"""RFC 9457 problem details: every error the API returns is `application/problem+json`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
    507: "Insufficient storage",
}


class Problem(Exception):
    """Raise to answer with a problem document. `code` is a stable slug clients can branch on."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or _TITLES.get(status, "error").lower().replace(" ", "_")
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    *,
    code: str,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:segserve:problem:{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; a validation error (422) adds `errors`: [{location, message}].",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "A stable slug clients can branch on."},
        "instance": {"type": "string"},
    },
}
_FASTAPI_VALIDATION_REF = "#/components/schemas/HTTPValidationError"


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI document say what the API sends: FastAPI documents its 422 as `application/json`
    with a `detail` list (HTTPValidationError), but `install` answers it as `application/problem+json`.
    Every such response is rewritten to the Problem schema, and FastAPI's own error schemas are dropped."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = _PROBLEM_SCHEMA
    problem = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                documented = response.get("content", {}).get("application/json", {}).get("schema", {})
                if documented.get("$ref") == _FASTAPI_VALIDATION_REF:
                    response["content"] = problem
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def install(app: FastAPI) -> None:
    """Route every error through `problem_response`, and document it so in the app's OpenAPI."""
    make_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(make_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.detail, code=exc.code, instance=request.url.path, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        code = _TITLES.get(exc.status_code, "error").lower().replace(" ", "_")
        return problem_response(
            exc.status_code, detail, code=code, instance=request.url.path, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors) or "invalid request"
        return problem_response(
            422, detail, code="validation_error", instance=request.url.path, errors=errors
        )

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
        # Every database connection of this process stayed busy for the pool's timeout: a burst of slow
        # requests (uploads) holds them. The client's request is fine; retrying later succeeds.
        log.warning("database connection pool exhausted on %s %s", request.method, request.url.path)
        return problem_response(
            503,
            "the service is busy (all database connections in use); retry shortly",
            code="database_busy",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "an internal error occurred; it has been logged",
            code="internal_error",
            instance=request.url.path,
        )
