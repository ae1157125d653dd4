"""Collects the routers."""

from fastapi import APIRouter

from service.api.routes import audit, evaluations, health, jobs, keys, models

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(jobs.router)
api_router.include_router(models.router)
api_router.include_router(keys.router)
api_router.include_router(evaluations.router)
api_router.include_router(audit.router)
