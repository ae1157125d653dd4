"""Lookups every route needs, answering with the same problem documents everywhere."""

from __future__ import annotations

from sqlalchemy.orm import Session

from models.catalog import Catalog, ModelCard
from segserve.db import Job
from service.problems import Problem


def job_or_404(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise Problem(404, f"no job with id '{job_id}'", code="job_not_found")
    return job


def available_card(catalog: Catalog, model_id: str) -> ModelCard:
    """The card of a model that can take jobs, or a 422 naming what is wrong."""
    if model_id not in catalog.ids():
        known = ", ".join(sorted(catalog.ids()))
        raise Problem(422, f"unknown model '{model_id}'; known models: {known}", code="unknown_model")
    status = catalog.status(model_id)
    if not status.available:
        raise Problem(422, f"model '{model_id}' is unavailable: {status.reason}", code="model_unavailable")
    return status.card
