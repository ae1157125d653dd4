"""Collects the routers."""

from fastapi import APIRouter

from service.api.routes import (
    audit,
    dicomweb,
    evaluations,
    health,
    intake,
    interactions,
    jobs,
    keys,
    lesions,
    metrics,
    models,
    results,
    reviews,
    viewer,
    worklist,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(metrics.router)
api_router.include_router(jobs.router)
api_router.include_router(results.router)
api_router.include_router(lesions.router)
api_router.include_router(models.router)
api_router.include_router(keys.router)
api_router.include_router(evaluations.router)
api_router.include_router(audit.router)
api_router.include_router(reviews.router)
api_router.include_router(interactions.router)
api_router.include_router(interactions.engines_router)
api_router.include_router(viewer.router)
api_router.include_router(worklist.router)
api_router.include_router(viewer.page_router)
api_router.include_router(dicomweb.router)
api_router.include_router(intake.router)
