"""/v1/models: the model catalog, with each model's availability."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from models.catalog import card_to_public
from service.api.deps import CanReadModels, CatalogDep
from service.problems import Problem

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="The model catalog")
async def list_models(catalog: CatalogDep, _key: CanReadModels) -> dict[str, Any]:
    statuses = await run_in_threadpool(catalog.statuses)
    return {"items": [card_to_public(s) for s in statuses]}


@router.get("/{model_id}", summary="One model card")
async def get_model(model_id: str, catalog: CatalogDep, _key: CanReadModels) -> dict[str, Any]:
    if model_id not in catalog.ids():
        raise Problem(404, f"no model with id '{model_id}'", code="model_not_found")
    return card_to_public(await run_in_threadpool(catalog.status, model_id))
