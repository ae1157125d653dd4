"""/v1/evaluations: batch evaluation for researchers, over folders on the server under the datasets
directory (SEGSERVE_DATASETS_DIR): predictions against references, or an nnU-Net / Decathlon dataset run
through a catalog model."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from evaluation.dataset import DatasetError, pair_folders, parse_labels, read_dataset
from segserve.config import Settings
from segserve.db import Evaluation, JobStatus, new_session
from segserve.jobs import evaluation_case_counts
from service.api.deps import CanCreateEvaluations, CanReadEvaluations, CatalogDep, SessionDep, SettingsDep
from service.api.lookup import single_image_card
from service.problems import Problem
from workers.celery_app import RUN_EVALUATION, send_evaluation_task
from workers.celery_app import app as celery_app

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
OUTPUTS = {"summary.json": "application/json", "cases.csv": "text/csv", "report.html": "text/html"}


class EvaluationCreate(BaseModel):
    """Either `predictions` + `references` (folders), or `dataset` + `model`. Paths are relative to the
    server's datasets directory."""

    predictions: str | None = None
    references: str | None = None
    labels: dict[int, str] | None = Field(
        default=None,
        description="Folders mode: label value -> name; default: the dataset.json next to the references",
    )
    dataset: str | None = None
    model: str | None = None
    label_map: dict[int, int] | None = Field(
        default=None, description="Dataset mode: model label value -> dataset label value (others become 0)"
    )
    tolerance_mm: float | None = Field(default=None, gt=0, description="Surface Dice tolerance, mm")
    lesion_labels: list[int] | None = Field(
        default=None,
        description="Label values (the references' values) scored lesion-wise as well; dataset mode "
        "defaults to the model card's lesion labels, mapped through label_map",
    )

    @model_validator(mode="after")
    def _one_mode(self) -> EvaluationCreate:
        folders = self.predictions is not None or self.references is not None
        dataset = self.dataset is not None or self.model is not None
        if folders == dataset:
            raise ValueError("give either 'predictions' and 'references', or 'dataset' and 'model'")
        if folders and (self.predictions is None or self.references is None):
            raise ValueError("folders mode needs both 'predictions' and 'references'")
        if dataset and (self.dataset is None or self.model is None):
            raise ValueError("dataset mode needs both 'dataset' and 'model'")
        return self

    @property
    def mode(self) -> Literal["folders", "dataset"]:
        return "dataset" if self.dataset is not None else "folders"


def _inside(settings: Settings, relative: str) -> Path:
    root = settings.resolved_datasets_dir
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise Problem(
            422, f"path '{relative}' is outside the datasets directory", code="path_outside_datasets"
        )
    if not path.exists():
        raise Problem(
            422, f"no such folder under the datasets directory: '{relative}'", code="path_not_found"
        )
    return path


def _lesion_labels(values: list[int], labels: Mapping[int, str]) -> list[int]:
    """``values`` as stored: sorted, each a foreground label of the references (else 422)."""
    wrong = sorted({v for v in values if v <= 0 or v not in labels})
    if wrong:
        raise Problem(
            422,
            f"lesion_labels {wrong} are not foreground labels of the references "
            f"({', '.join(str(k) for k in sorted(labels) if k > 0)})",
            code="invalid_lesion_labels",
        )
    return sorted(set(values))


def _plan(settings: Settings, body: EvaluationCreate, catalog: CatalogDep) -> dict[str, Any]:
    """Validate the request against the files; return the evaluation's stored params."""
    try:
        if body.mode == "folders":
            assert body.predictions is not None and body.references is not None
            references = _inside(settings, body.references)
            pairs = pair_folders(_inside(settings, body.predictions), references)
            labels = body.labels
            if labels is None:
                candidates = (references / "dataset.json", references.parent / "dataset.json")
                meta = next((c for c in candidates if c.is_file()), None)
                if meta is None:
                    raise Problem(
                        422,
                        "give 'labels' (value -> name): no dataset.json next to the references",
                        code="labels_needed",
                    )
                labels = parse_labels(json.loads(meta.read_text(encoding="utf-8")).get("labels"))
            return {
                "predictions": body.predictions,
                "references": body.references,
                "labels": {str(k): v for k, v in labels.items() if k > 0},
                "tolerance_mm": body.tolerance_mm,
                "lesion_labels": _lesion_labels(body.lesion_labels or [], labels),
                "n_cases": len(pairs),
            }
        assert body.dataset is not None and body.model is not None
        card = single_image_card(catalog, body.model, "a dataset evaluation")
        dataset = read_dataset(_inside(settings, body.dataset))
    except DatasetError as exc:
        raise Problem(422, str(exc), code="invalid_dataset") from None
    label_map = body.label_map or {}
    wrong_keys = sorted(set(label_map) - set(card.labels))
    wrong_values = sorted(set(label_map.values()) - set(dataset.labels))
    if wrong_keys or wrong_values:
        raise Problem(
            422,
            f"label_map: model values {wrong_keys} are not labels of {body.model}; "
            f"dataset values {wrong_values} are not in dataset.json",
            code="invalid_label_map",
        )
    lesions = body.lesion_labels
    if lesions is None:  # the model's lesion labels, in the dataset's values (unmapped ones become 0)
        mapped = label_map or {v: v for v in card.lesion_labels}
        lesions = [mapped[v] for v in card.lesion_labels if v in mapped]
    return {
        "dataset": body.dataset,
        "model": body.model,
        "label_map": {str(k): v for k, v in label_map.items()},
        "labels": {str(k): v for k, v in dataset.labels.items() if k > 0},
        "tolerance_mm": body.tolerance_mm,
        "lesion_labels": _lesion_labels(lesions, dataset.labels),
        "n_cases": len(dataset.cases),
    }


def _public(settings: Settings, evaluation: Evaluation, counts: tuple[int, int] | None) -> dict[str, Any]:
    base = f"/v1/evaluations/{evaluation.id}"
    progress = evaluation.progress
    if counts is not None and evaluation.status == JobStatus.running.value and counts[1]:
        progress = 0.99 * counts[0] / max(counts[1], evaluation.n_cases or 1)
    outputs = None
    if evaluation.status == JobStatus.succeeded.value:
        outputs = {name: f"{base}/{name}" for name in OUTPUTS}
    return {
        "id": evaluation.id,
        "status": evaluation.status,
        "mode": evaluation.mode,
        "progress": progress,
        "n_cases": evaluation.n_cases,
        "cases_finished": counts[0] if counts else None,
        "params": {k: v for k, v in evaluation.params.items() if k != "n_cases"},
        "error": evaluation.error,
        "created_at": evaluation.created_at.isoformat(),
        "finished_at": evaluation.finished_at.isoformat() if evaluation.finished_at else None,
        "links": {"self": base, "outputs": outputs},
    }


def _create(settings: Settings, params: dict[str, Any], mode: str, key_id: str) -> Evaluation:
    with new_session(settings.resolved_database_url) as session:
        evaluation = Evaluation(
            id=uuid.uuid4().hex,
            status=JobStatus.queued.value,
            mode=mode,
            params=params,
            n_cases=int(params["n_cases"]),
            submitted_by=key_id,
        )
        session.add(evaluation)
        session.commit()
        session.refresh(evaluation)
    try:
        send_evaluation_task(celery_app, RUN_EVALUATION, evaluation.id)
    except Exception:
        log.warning(
            "evaluation %s: publishing failed; recovery will publish it", evaluation.id, exc_info=True
        )
    return evaluation


@router.post("", status_code=202, summary="Start a batch evaluation")
async def create_evaluation(
    request: Request,
    body: EvaluationCreate,
    settings: SettingsDep,
    catalog: CatalogDep,
    key: CanCreateEvaluations,
) -> JSONResponse:
    params = await run_in_threadpool(_plan, settings, body, catalog)
    evaluation = await run_in_threadpool(_create, settings, params, body.mode, key.id)
    request.state.created_resource = ("evaluation", evaluation.id)
    return JSONResponse(
        _public(settings, evaluation, None),
        status_code=202,
        headers={"Location": f"/v1/evaluations/{evaluation.id}"},
    )


def _get(session: SessionDep, evaluation_id: str) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise Problem(404, f"no evaluation with id '{evaluation_id}'", code="evaluation_not_found")
    return evaluation


@router.get("", summary="List evaluations, newest first")
def list_evaluations(
    session: SessionDep,
    settings: SettingsDep,
    _key: CanReadEvaluations,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    rows = session.scalars(select(Evaluation).order_by(Evaluation.created_at.desc()).limit(limit)).all()
    return {"items": [_public(settings, e, None) for e in rows]}


@router.get("/{evaluation_id}", summary="An evaluation's progress and links to its outputs")
def get_evaluation(
    evaluation_id: str, session: SessionDep, settings: SettingsDep, _key: CanReadEvaluations
) -> dict[str, Any]:
    evaluation = _get(session, evaluation_id)
    counts = evaluation_case_counts(session, evaluation.id) if evaluation.mode == "dataset" else None
    return _public(settings, evaluation, counts)


@router.get("/{evaluation_id}/{name}", summary="An output: summary.json, cases.csv or report.html")
def get_output(
    evaluation_id: str, name: str, session: SessionDep, settings: SettingsDep, _key: CanReadEvaluations
) -> FileResponse:
    evaluation = _get(session, evaluation_id)
    if name not in OUTPUTS:
        raise Problem(404, f"no output '{name}'; outputs are {', '.join(OUTPUTS)}", code="output_not_found")
    if evaluation.status != JobStatus.succeeded.value:
        raise Problem(
            409, f"evaluation is {evaluation.status}; outputs are not ready", code="evaluation_not_finished"
        )
    return FileResponse(settings.evaluations_dir / evaluation.id / name, media_type=OUTPUTS[name])
