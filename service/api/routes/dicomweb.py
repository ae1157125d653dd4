"""DICOMweb STOW-RS intake: PACS and modalities push DICOM instances; each series becomes one job.

    POST /dicomweb/studies                   model: SEGSERVE_DICOMWEB_DEFAULT_MODEL
    POST /dicomweb/studies/{study}           same; instances of other studies are refused
    POST /dicomweb/{model}/studies           model chosen by path
    POST /dicomweb/{model}/studies/{study}

Body: multipart/related; type="application/dicom", one PS3.10 instance per part, streamed to disk. Key: the
usual API key (Authorization: Bearer, or X-API-Key) of a role that may create jobs. Answer: the PS3.18
store response as application/dicom+json (service/dicomweb/response.py). Stored instances wait in their
series' collection until the series has been quiet for SEGSERVE_DICOMWEB_QUIET_S; a worker then makes
the job (workers/intake.py). GET /v1/intake lists the series and the job each became.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from models.catalog import Catalog
from segserve.audit import record
from segserve.config import Settings
from segserve.db import ApiKey, new_session
from segserve.dicom.deid_store import uid_key
from segserve.idempotency import Claim, StoredAnswer
from segserve.storage import new_staging_dir
from service import idempotency
from service.api.deps import CanCreateJobs, CatalogDep, SettingsDep
from service.api.lookup import single_image_card
from service.dicomweb.collect import place
from service.dicomweb.instances import SOP_CLASS_NOT_SUPPORTED, Received, Rejected, inspect_part
from service.dicomweb.multipart import StowPart, check_media_type, receive_related
from service.dicomweb.response import MEDIA_TYPE, status_code, store_response, warning_headers
from service.disk import check_declared_length, upload_reserve
from service.problems import Problem

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

_BODY: dict[str, object] = {
    "parameters": [idempotency.OPENAPI_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"},
            }
        },
    },
    "responses": {
        "200": {"description": "All instances stored", "content": {MEDIA_TYPE: {}}},
        "202": {"description": "Some instances stored, some failed", "content": {MEDIA_TYPE: {}}},
        "409": {"description": "No instance stored (or Idempotency-Key in use)", "content": {MEDIA_TYPE: {}}},
        "415": {"description": "Not multipart/related with type application/dicom"},
    },
}


@dataclass(frozen=True)
class _Outcome:
    stored: list[Received]
    failed: list[Rejected]
    series_ids: list[str]


def _model_for(catalog: Catalog, settings: Settings, model: str | None) -> str | None:
    """The model of the request: from the path, else the configured default; 404 / 422 otherwise.
    None when there is no model in the path and modality rules are configured: each instance's modality
    then chooses (`_ModalityRules`)."""
    if model is None and settings.dicomweb_model_rules:
        return None
    chosen = model or settings.dicomweb_default_model
    if not chosen:
        raise Problem(
            404,
            "no model chosen: POST to /dicomweb/{model}/studies (a model id from GET /v1/models), or "
            "configure SEGSERVE_DICOMWEB_DEFAULT_MODEL for /dicomweb/studies",
            code="no_default_model",
        )
    if chosen not in catalog.ids():
        where = "in the URL" if model else "in SEGSERVE_DICOMWEB_DEFAULT_MODEL"
        known = ", ".join(sorted(catalog.ids()))
        raise Problem(404, f"unknown model '{chosen}' {where}; known models: {known}", code="unknown_model")
    single_image_card(catalog, chosen, "STOW-RS")  # 422: weights missing or altered, several channels
    return chosen


class _ModalityRules:
    """SEGSERVE_DICOMWEB_MODEL_RULES (modality -> model, falling back to the default model): the model for
    one instance, or why there is none (checked once per model and request)."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self._catalog = catalog
        self._rules = {k.upper(): v for k, v in settings.dicomweb_model_rules.items()}
        self._default = settings.dicomweb_default_model
        self._why_not: dict[str, str | None] = {}

    def choose(self, item: Received) -> tuple[str | None, str]:
        modality = item.facts.modality.upper()
        model = self._rules.get(modality) or self._default
        if model is None:
            return None, (
                f"part {item.part}: no model for modality '{modality or 'none'}' "
                f"(SEGSERVE_DICOMWEB_MODEL_RULES names {', '.join(sorted(self._rules))}); "
                "POST to /dicomweb/{model}/studies to choose one"
            )
        if model not in self._why_not:
            try:
                single_image_card(self._catalog, model, "STOW-RS")
                self._why_not[model] = None
            except Problem as problem:
                self._why_not[model] = problem.detail
        why = self._why_not[model]
        return (None, f"part {item.part}: {why}") if why else (model, "")


def _process(
    settings: Settings,
    parts: list[StowPart],
    model: str | _ModalityRules,
    key_id: str,
    study: str | None,
) -> _Outcome:
    deid_key = uid_key(settings.resolved_data_dir) if settings.deidentify else None
    by_model: dict[str, list[Received]] = {}
    rejected: list[Rejected] = []
    for part in parts:
        checked = inspect_part(part, study_uid=study, deid_key=deid_key)
        if isinstance(checked, Rejected):
            rejected.append(checked)
            continue
        model_id, why = (model, "") if isinstance(model, str) else model.choose(checked)
        if model_id is None:
            rejected.append(
                Rejected(
                    checked.part,
                    SOP_CLASS_NOT_SUPPORTED,
                    why,
                    checked.sop_class_uid,
                    checked.sop_instance_uid,
                )
            )
        else:
            by_model.setdefault(model_id, []).append(checked)
    stored: list[Received] = []
    series_ids: list[str] = []
    for model_id, received in by_model.items():
        placement = place(settings, received, model_id, key_id)
        stored += placement.stored
        rejected += placement.failed
        series_ids += placement.series_ids
    return _Outcome(stored, sorted(rejected, key=lambda r: r.part), series_ids)


def _audit(
    request: Request, settings: Settings, route: str, key: ApiKey, outcome: _Outcome, status: int
) -> None:
    with new_session(settings.resolved_database_url) as session:
        record(
            session,
            key_id=key.id,
            action=f"POST {route}",
            resource_type="incoming_series",
            resource_id=outcome.series_ids[0] if len(outcome.series_ids) == 1 else None,
            client_address=request.client.host if request.client else None,
            status_code=status,
            detail={
                "stored": len(outcome.stored),
                "failed": len(outcome.failed),
                "series": outcome.series_ids[:50],
            },
        )


async def _stow(
    request: Request,
    settings: Settings,
    catalog: Catalog,
    key: ApiKey,
    route: str,
    model: str | None = None,
    study: str | None = None,
) -> Response:
    idempotency_key = idempotency.request_key(request)
    model_id = await run_in_threadpool(_model_for, catalog, settings, model)
    boundary = check_media_type(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise Problem(
            413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes", code="upload_too_large"
        )
    check_declared_length(settings, int(declared) if declared and declared.isdigit() else 0)
    staging = new_staging_dir(settings.staging_dir)
    held: Claim | None = None
    try:
        digest = idempotency.PartDigest.of(request) if idempotency_key else None
        parts = await receive_related(
            boundary,
            request.stream(),
            staging,
            settings.max_upload_bytes,
            upload_reserve(settings, staging),
            digest,
        )
        if not parts:
            raise Problem(400, "the multipart/related body holds no parts", code="no_instances")
        if idempotency_key and digest is not None:
            claimed = await idempotency.begin(settings, key.id, idempotency_key, digest)
            if isinstance(claimed, StoredAnswer):
                log.info("stow: key %s: answer replayed (Idempotency-Key)", key.id)
                return idempotency.replay(claimed)
            held = claimed
        async with idempotency.released_on_error(settings, held):
            chooser = model_id if model_id is not None else _ModalityRules(catalog, settings)
            outcome = await run_in_threadpool(_process, settings, parts, chooser, key.id, study)
            response = _answer(outcome)
            if held is not None:  # at once: a client that drops the connection now must not hold the key
                await _settle_key(settings, held, response, outcome)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    status = response.status_code
    try:
        await run_in_threadpool(_audit, request, settings, route, key, outcome, status)
    except Exception:  # never lose the answer to an audit failure, but say so loudly
        log.exception("could not write the audit event for STOW-RS")
    log.info(
        "stow: key %s: %d instance(s) stored in %d series for model %s, %d failed",
        key.id,
        len(outcome.stored),
        len(outcome.series_ids),
        model_id or "by modality",
        len(outcome.failed),
    )
    return response


def _answer(outcome: _Outcome) -> JSONResponse:
    """The PS3.18 store response (200, 202 or 409) with a Warning header per failed instance."""
    status = status_code(len(outcome.stored), len(outcome.failed))
    response = JSONResponse(store_response(outcome.stored, outcome.failed), status, media_type=MEDIA_TYPE)
    for name, value in warning_headers(outcome.failed):
        response.headers.append(name, value)
    return response


async def _settle_key(settings: Settings, held: Claim, response: Response, outcome: _Outcome) -> None:
    """Keep the answer for the Idempotency-Key when instances were stored (200, 202); forget the key when
    none was (409), so that the client may fix the request and retry. Either way the answer is sent."""
    try:
        if outcome.stored:
            await idempotency.complete(settings, held, idempotency.answer_of(response))
        else:
            await idempotency.release(settings, held)
    except Exception:  # the instances are stored: the answer must reach the client all the same
        log.exception("stow: could not record the Idempotency-Key's answer")


@router.post("/studies", openapi_extra=_BODY, summary="STOW-RS: store instances (default model)")
async def store_default(
    request: Request, settings: SettingsDep, catalog: CatalogDep, key: CanCreateJobs
) -> Response:
    return await _stow(request, settings, catalog, key, "/dicomweb/studies")


@router.post("/studies/{study}", openapi_extra=_BODY, summary="STOW-RS: store instances of one study")
async def store_study_default(
    study: str, request: Request, settings: SettingsDep, catalog: CatalogDep, key: CanCreateJobs
) -> Response:
    return await _stow(request, settings, catalog, key, "/dicomweb/studies/{study}", study=study)


@router.post("/{model}/studies", openapi_extra=_BODY, summary="STOW-RS: store instances for a model")
async def store_for_model(
    model: str, request: Request, settings: SettingsDep, catalog: CatalogDep, key: CanCreateJobs
) -> Response:
    return await _stow(request, settings, catalog, key, "/dicomweb/{model}/studies", model=model)


@router.post(
    "/{model}/studies/{study}",
    openapi_extra=_BODY,
    summary="STOW-RS: store instances of one study for a model",
)
async def store_study_for_model(
    model: str, study: str, request: Request, settings: SettingsDep, catalog: CatalogDep, key: CanCreateJobs
) -> Response:
    return await _stow(
        request, settings, catalog, key, "/dicomweb/{model}/studies/{study}", model=model, study=study
    )
