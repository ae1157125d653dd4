"""Request dependencies as short aliases, so handlers read like prose and tests can override them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from models.catalog import Catalog
from segserve.config import Settings, get_settings
from segserve.db import ApiKey, new_session
from segserve.security import allowed, find_key
from service.problems import Problem

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = new_session(settings.resolved_database_url)
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def get_catalog(request: Request, settings: SettingsDep) -> Catalog:
    """One catalog per app: it caches weight checksums between requests."""
    catalog: Catalog | None = getattr(request.app.state, "catalog", None)
    if catalog is None:
        catalog = Catalog(settings.resolved_models_dir)
        request.app.state.catalog = catalog
    return catalog


CatalogDep = Annotated[Catalog, Depends(get_catalog)]


def presented_key(request: Request) -> str | None:
    """The secret the client sent: 'Authorization: Bearer <secret>' or 'X-API-Key: <secret>'."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


def current_key(request: Request, session: SessionDep) -> ApiKey:
    presented = presented_key(request)
    if presented is None:
        raise Problem(
            401,
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = find_key(session, presented)
    if key is None:
        raise Problem(
            401,
            "the API key is not valid or has been revoked",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.key_id = key.id
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def require(permission: str) -> Callable[[ApiKey], ApiKey]:
    """Dependency factory: the current key, if its role grants `permission`; else 403."""

    def check(key: CurrentKey) -> ApiKey:
        if not allowed(key.role, permission):
            raise Problem(
                403, f"role '{key.role}' may not do this (needs {permission})", code="forbidden_role"
            )
        return key

    return check


CanCreateJobs = Annotated[ApiKey, Depends(require("jobs:create"))]
CanReadJobs = Annotated[ApiKey, Depends(require("jobs:read"))]
CanDeleteJobs = Annotated[ApiKey, Depends(require("jobs:delete"))]
CanReadModels = Annotated[ApiKey, Depends(require("models:read"))]
CanCreateEvaluations = Annotated[ApiKey, Depends(require("evaluations:create"))]
CanReadEvaluations = Annotated[ApiKey, Depends(require("evaluations:read"))]
CanAdminKeys = Annotated[ApiKey, Depends(require("keys:admin"))]
