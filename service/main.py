"""Builds the FastAPI app. Run with `uvicorn service.main:create_app --factory` (or `segserve api`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from segserve.config import get_settings
from segserve.db import init_db
from segserve.logging import setup_logging
from segserve.storage import clean_stale_staging
from service import audit, problems, shutdown
from service.api.router import api_router
from service.shutdown import ShutdownCancelled
from workers.celery_app import app as celery_app
from workers.celery_app import configure

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    setup_logging(settings.log_level)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    init_db(settings.resolved_database_url)
    removed = clean_stale_staging(settings.staging_dir)
    if removed:
        log.info("removed %d stale upload(s) from staging", removed)
    configure(celery_app, settings)
    yield
    await shutdown.drain()  # requests cancelled by the shutdown deadline send their 503 first


def create_app() -> FastAPI:
    app = FastAPI(
        title="segserve",
        version="0.1.0",
        description="Segmentation of CT and MRI scans: submit a scan, get a label volume and metrics.",
        openapi_tags=[
            {
                "name": "interactions",
                "description": "Semi-automatic segmentation on a succeeded job: a session takes prompts "
                "(clicks, boxes, painted slices; voxel indices or scanner coordinates in mm, LPS), answers "
                "each with the refined mask's summary within the request (computed by an interactive "
                "worker on its own queue, which keeps the prepared image between clicks), undoes per "
                "prompt, serves the mask as NIfTI, and commits it into a new label version. Sessions "
                "unused for SEGSERVE_INTERACTIVE_TTL_S expire (410).",
            }
        ],
        lifespan=_lifespan,
    )
    problems.install(app)
    audit.install(app)
    app.include_router(api_router)
    app.add_middleware(ShutdownCancelled)  # added last: the outermost, around the audit middleware
    return app
