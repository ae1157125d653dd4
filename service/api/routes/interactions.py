"""Interaction sessions (semi-automatic segmentation, issue #14) on a succeeded job:
create one, post prompts (clicks, boxes, painted slices; voxel indices or scanner coordinates), undo, fetch
the current mask (NIfTI on the job's result grid), commit it as a new label version, close it.

Each prompt is answered within the request: the mask is computed by an interactive worker on its own
queue (service/interactive.py, workers/interactive.py), which keeps the session's prepared image between
clicks. The mask is a function of the prompt list alone, so undo drops the last prompt and segments again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.catalog import Catalog
from models.interactive.codec import prompt_from_json
from models.interactive.prompts import PromptError, check_prompts
from segserve.config import Settings
from segserve.db import ApiKey, Job, LabelVersion
from segserve.interactions import InteractionSession, SessionStatus, end, expire_if_idle, mask_path, touch
from service import interactive
from service.api.deps import CatalogDep, SessionDep, SettingsDep, require
from service.api.lookup import job_with_files, require_succeeded
from service.api.routes.reviews import (
    LabelVersionPublic,
    card_labels,
    named_labels,
    save_version,
    version_public,
)
from service.problems import Problem

router = APIRouter(prefix="/v1/jobs", tags=["interactions"])
CanInteract = Annotated[ApiKey, Depends(require("reviews:write"))]
_ERRORS: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 410: {}, 422: {}}
_WORKER_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 503: {}}

Point = Annotated[list[float], Field(min_length=3, max_length=3)]
Coordinates = Annotated[
    Literal["voxel", "scanner"],
    Field(
        description="voxel: indices of the image array (I, J, K, as in the result NIfTI); scanner: DICOM "
        "patient coordinates in mm (LPS), as GET .../lesions reports centroids, mapped to the nearest voxel"
    ),
]


class Target(BaseModel):
    """The structure a mask is for: an existing label (`label`), or a new one the reviewer names (`name`,
    with an optional `value`; default the lowest value above every label the job has)."""

    label: int | None = Field(default=None, ge=1, le=255)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    value: int | None = Field(default=None, ge=1, le=255)

    @model_validator(mode="after")
    def _one_of(self) -> Target:
        if (self.label is None) == (self.name is None):
            raise ValueError("give either label (an existing structure) or name (a new one)")
        if self.value is not None and self.name is None:
            raise ValueError("value goes with name (a new label)")
        return self


class SessionCreate(BaseModel):
    engine: str = Field(
        default="classical", description="An interactive engine (GET /v1/interactive/engines)"
    )
    target: Target | None = Field(default=None, description="May also be given at the commit")


class ClickIn(BaseModel):
    type: Literal["click"]
    point: Point
    foreground: bool = Field(default=True, description="inside the structure (true) or outside it")
    coordinates: Coordinates = "voxel"


class BoxIn(BaseModel):
    type: Literal["box"]
    lo: Point
    hi: Point
    coordinates: Coordinates = "voxel"


class SliceIn(BaseModel):
    """Painted pixels of one slice (voxel indices only): (u, v) in the slice's plane, i.e. the image's two
    other axes in order."""

    type: Literal["slice"]
    axis: int = Field(ge=0, le=2)
    index: int = Field(ge=0)
    pixels: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(max_length=1_000_000)


PromptIn = Annotated[ClickIn | BoxIn | SliceIn, Body(discriminator="type")]


class Bbox(BaseModel):
    start: list[int] = Field(description="first voxel (inclusive) along I, J, K")
    stop: list[int] = Field(description="last voxel + 1 (exclusive)")


class MaskSummary(BaseModel):
    session_id: str
    job_id: str
    prompt_count: int
    voxels: int
    volume_ml: float
    bbox: Bbox | None
    mask_url: str = Field(description="The mask (.nii.gz, uint8 0/1 on the job's result grid)")
    seconds: float = Field(description="The worker's time for this mask (prepare on a cache miss + segment)")
    prepared: bool = Field(description="Whether the image was prepared for this call (a cache miss)")


class SessionPublic(BaseModel):
    id: str
    job_id: str
    key_id: str
    engine: str
    status: str = Field(description="open, committed, closed or expired")
    target: dict[str, Any] | None
    prompts: list[dict[str, Any]] = Field(description="In voxel indices, oldest first")
    prompt_count: int
    mask_url: str | None
    committed_version: int | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime


class CommitIn(BaseModel):
    target: Target | None = Field(default=None, description="Default: the session's target")
    comment: str = Field(default="", max_length=5000)
    base_version: int | None = Field(
        default=None, ge=0, description="The label version the mask goes into (default: the latest)"
    )


def _mask_url(row: InteractionSession) -> str:
    return f"/v1/jobs/{row.job_id}/interactions/{row.id}/mask?prompts={len(row.mask_prompts or [])}"


def _public(row: InteractionSession) -> SessionPublic:
    target = None
    if row.target_label is not None:
        target = {"label": row.target_label, "name": row.target_name}
    return SessionPublic(
        id=row.id,
        job_id=row.job_id,
        key_id=row.key_id,
        engine=row.engine,
        status=row.status,
        target=target,
        prompts=list(row.prompts),
        prompt_count=len(row.prompts),
        mask_url=_mask_url(row) if row.mask_prompts is not None and row.status == "open" else None,
        committed_version=row.committed_version,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
    )


def _engine_names() -> list[str]:
    from models.interactive.engines import engine_names

    return list(engine_names())


def _resolve_target(target: Target, catalog: Catalog, session: Session, job: Job) -> tuple[int, str | None]:
    """(label value, name when it is a new label) of a target, or a 422 naming what is wrong."""
    card = card_labels(catalog, job.model_id)
    named = named_labels(session, job.id)
    known = {**{v: n for v, n in card.items() if v != 0}, **named}
    if target.label is not None:
        if target.label not in known:
            listing = ", ".join(f"{v} ({n})" for v, n in sorted(known.items()))
            raise Problem(
                422, f"label {target.label} is not a label of this job: {listing}", code="unknown_label"
            )
        return target.label, named.get(target.label)
    assert target.name is not None
    for value, name in known.items():
        if name.casefold() == target.name.casefold():
            raise Problem(
                422,
                f"a label named '{name}' exists already (value {value}): give "
                f'{{"label": {value}}} to add to it',
                code="label_name_exists",
            )
    if target.value is not None:
        if target.value in known:
            raise Problem(
                422,
                f"value {target.value} is label '{known[target.value]}' already",
                code="label_value_taken",
            )
        return target.value, target.name
    value = max([*card, *named, 0]) + 1
    if value > 255:
        raise Problem(422, "no label value is left below 256: give a free value", code="label_value_taken")
    return value, target.name


def _session(
    db: Session, settings: Settings, job_id: str, session_id: str, *, open_only: bool = True
) -> tuple[Job, InteractionSession]:
    """The job (404, 410 files_deleted) and its session (404 for an unknown one or another job's). With
    `open_only`: 410 session_expired, 409 session_committed / session_closed."""
    job = job_with_files(db, job_id)
    row = db.get(InteractionSession, session_id)
    if row is None or row.job_id != job.id:
        raise Problem(
            404, f"job '{job_id}' has no interaction session '{session_id}'", code="session_not_found"
        )
    expired = expire_if_idle(db, row, settings.jobs_dir)
    if not open_only:
        return job, row
    if expired:
        raise Problem(
            410,
            f"the session expired: unused for more than {settings.interactive_ttl_s:g} s (since "
            f"{row.last_used_at:%Y-%m-%dT%H:%M:%SZ}); its prepared image and mask were freed. Create a new "
            "session (its prompts are in GET .../interactions/{id})",
            code="session_expired",
        )
    if row.status == SessionStatus.committed.value:
        raise Problem(
            409,
            f"the session was committed as label version {row.committed_version} and takes no more calls; "
            "create a new session to go on",
            code="session_committed",
        )
    if row.status == SessionStatus.closed.value:
        raise Problem(409, "the session was closed; create a new session", code="session_closed")
    return job, row


def _voxel(point: list[float], coordinates: str, affine: Any, what: str) -> list[int]:
    if coordinates == "scanner":
        return interactive.scanner_to_voxel(point, affine)
    if not all(float(v).is_integer() for v in point):
        raise Problem(422, f"{what} {point}: voxel coordinates must be integers", code="invalid_prompt")
    return [int(v) for v in point]


def _prompt_doc(body: ClickIn | BoxIn | SliceIn, job: Job, settings: Settings) -> dict[str, Any]:
    """The prompt in voxel indices (as sessions store it), or a 422 naming the prompt that does not fit."""
    shape = (int(job.image_shape[0]), int(job.image_shape[1]), int(job.image_shape[2]))
    scanner = getattr(body, "coordinates", "voxel") == "scanner"
    affine = interactive.result_affine(settings, job) if scanner else None
    doc: dict[str, Any]
    if isinstance(body, ClickIn):
        doc = {
            "type": "click",
            "point": _voxel(body.point, body.coordinates, affine, "point"),
            "foreground": body.foreground,
        }
    elif isinstance(body, BoxIn):
        lo = _voxel(body.lo, body.coordinates, affine, "lo")
        hi = _voxel(body.hi, body.coordinates, affine, "hi")
        doc = {
            "type": "box",
            "lo": [min(a, b) for a, b in zip(lo, hi, strict=True)],
            "hi": [max(a, b) for a, b in zip(lo, hi, strict=True)],
        }
    else:
        doc = {"type": "slice", "axis": body.axis, "index": body.index, "pixels": body.pixels}
    try:
        check_prompts([prompt_from_json(doc, shape)], shape)
    except PromptError as exc:
        where = " (from scanner coordinates " + str(_scanner_points(body)) + " mm LPS)" if scanner else ""
        message = str(exc).replace("prompt 0 ", "prompt ", 1)
        code = "prompt_outside_volume" if "outside" in message else "invalid_prompt"
        raise Problem(422, f"{message}{where}", code=code) from None
    return doc


def _scanner_points(body: ClickIn | BoxIn | SliceIn) -> list[list[float]]:
    return (
        [body.point] if isinstance(body, ClickIn) else [body.lo, body.hi] if isinstance(body, BoxIn) else []
    )


def _run(
    db: Session, settings: Settings, row: InteractionSession, restore: list[dict[str, Any]]
) -> MaskSummary:
    """Ask a worker for the mask of the session's stored prompts; on a refusal or 503, put the prompt list
    back to `restore` (what it was before this call) so the session stays as the reviewer last saw it."""
    changed = list(row.prompts)
    try:
        answer = interactive.ask_worker(settings, row.id)
    except Problem:
        _restore(db, row, changed, restore)
        raise
    if not answer.get("ok"):
        _restore(db, row, changed, restore)
        raise Problem(int(answer["status"]), str(answer["detail"]), code=str(answer["code"]))
    db.refresh(row)
    return MaskSummary(
        session_id=row.id,
        job_id=row.job_id,
        prompt_count=int(answer["prompt_count"]),
        voxels=int(answer["voxels"]),
        volume_ml=float(answer["volume_ml"]),
        bbox=Bbox(**answer["bbox"]) if answer["bbox"] else None,
        mask_url=_mask_url(row),
        seconds=float(answer["seconds"]),
        prepared=bool(answer["prepared"]),
    )


def _restore(db: Session, row: InteractionSession, changed: list[Any], restore: list[Any]) -> None:
    db.refresh(row)
    if row.prompts == changed:  # nobody changed it since
        row.prompts = restore
        db.commit()


engines_router = APIRouter(prefix="/v1/interactive", tags=["interactions"])


@engines_router.get("/engines", summary="The interactive engines a session may use")
def get_engines(_key: CanInteract) -> dict[str, list[str]]:
    return {"engines": _engine_names()}


@router.post(
    "/{job_id}/interactions",
    status_code=201,
    response_model=SessionPublic,
    summary="Start an interaction session (semi-automatic segmentation) on a succeeded job",
    responses={409: {}, 410: {}, 404: {}, 422: {}},
)
def create_session(
    job_id: str,
    db: SessionDep,
    settings: SettingsDep,
    catalog: CatalogDep,
    key: CanInteract,
    body: SessionCreate | None = None,
) -> SessionPublic:
    body = body or SessionCreate()
    job = job_with_files(db, job_id)
    require_succeeded(job)
    engines = _engine_names()
    if body.engine not in engines:
        raise Problem(
            422, f"unknown engine '{body.engine}'; engines: {', '.join(engines)}", code="unknown_engine"
        )
    value, name = _resolve_target(body.target, catalog, db, job) if body.target else (None, None)
    row = InteractionSession(
        id=uuid.uuid4().hex,
        job_id=job.id,
        key_id=key.id,
        engine=body.engine,
        target_label=value,
        target_name=name,
        prompts=[],
    )
    touch(row, settings.interactive_ttl_s)
    db.add(row)
    db.commit()
    return _public(row)


@router.get(
    "/{job_id}/interactions/{session_id}",
    response_model=SessionPublic,
    summary="A session's state and prompts",
    responses={404: {}, 410: {}},
)
def get_session(
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, _key: CanInteract
) -> SessionPublic:
    return _public(_session(db, settings, job_id, session_id, open_only=False)[1])


@router.post(
    "/{job_id}/interactions/{session_id}/prompts",
    response_model=MaskSummary,
    summary="Add a prompt (click, box or painted slice) and get the refined mask's summary",
    responses=_WORKER_ERRORS,
)
def post_prompt(
    job_id: str, session_id: str, body: PromptIn, db: SessionDep, settings: SettingsDep, _key: CanInteract
) -> MaskSummary:
    job, row = _session(db, settings, job_id, session_id)
    doc = _prompt_doc(body, job, settings)
    before = list(row.prompts)
    row.prompts = [*before, doc]
    touch(row, settings.interactive_ttl_s)
    db.commit()
    return _run(db, settings, row, before)


@router.post(
    "/{job_id}/interactions/{session_id}/undo",
    response_model=MaskSummary,
    summary="Drop the last prompt and get the mask of the others",
    responses=_WORKER_ERRORS,
)
def undo(
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, _key: CanInteract
) -> MaskSummary:
    _, row = _session(db, settings, job_id, session_id)
    before = list(row.prompts)
    if not before:
        raise Problem(409, "the session has no prompt to undo", code="nothing_to_undo")
    row.prompts = before[:-1]
    touch(row, settings.interactive_ttl_s)
    db.commit()
    return _run(db, settings, row, before)


@router.get(
    "/{job_id}/interactions/{session_id}/mask",
    response_class=FileResponse,
    summary="The current mask (.nii.gz, uint8 0/1 on the job's result grid)",
    responses={200: {"content": {"application/gzip": {}}}, **_ERRORS},
)
def get_mask(
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, _key: CanInteract
) -> FileResponse:
    job, row = _session(db, settings, job_id, session_id)
    path = mask_path(settings.jobs_dir, job.id, row.id)
    if row.mask_prompts is None or not path.exists():
        raise Problem(404, "the session has no mask yet: post a prompt first", code="no_mask")
    headers = {"Cache-Control": "no-store", "X-Prompt-Count": str(len(row.mask_prompts))}
    return FileResponse(
        path, media_type="application/gzip", filename=f"{row.id}_mask.nii.gz", headers=headers
    )


@router.post(
    "/{job_id}/interactions/{session_id}/commit",
    status_code=201,
    response_model=LabelVersionPublic,
    summary="Put the mask into the labels as a new label version (an existing structure or a new named one)",
    responses=_ERRORS,
)
def commit(
    job_id: str,
    session_id: str,
    db: SessionDep,
    settings: SettingsDep,
    catalog: CatalogDep,
    key: CanInteract,
    body: CommitIn | None = None,
) -> LabelVersionPublic:
    body = body or CommitIn()
    job, row = _session(db, settings, job_id, session_id)
    if body.target is not None:
        target = body.target
    elif row.target_label is not None:
        target = (
            Target(name=row.target_name, value=row.target_label)
            if row.target_name
            else Target(label=row.target_label)
        )
    else:
        raise Problem(
            422, "say which structure the mask is for: target {label} or {name}", code="missing_target"
        )
    value, name = _resolve_target(target, catalog, db, job)
    if not row.prompts or row.mask_prompts != row.prompts:
        detail = (
            "the session has no prompt" if not row.prompts else "the mask of the last prompt is not ready"
        )
        raise Problem(
            409 if row.prompts else 422, detail, code="mask_not_current" if row.prompts else "empty_mask"
        )
    mask = interactive.mask_array(settings, job.id, row.id)
    if not mask.any():
        raise Problem(422, "the mask is empty: nothing to commit", code="empty_mask")
    latest = db.scalar(select(func.max(LabelVersion.version)).where(LabelVersion.job_id == job.id)) or 0
    base = latest if body.base_version is None else body.base_version
    if base > latest:
        raise Problem(404, f"job has no label version {base}", code="label_version_not_found")
    # Claim the session first, so two commits of one session cannot both make a version.
    claimed = db.execute(
        update(InteractionSession)
        .where(InteractionSession.id == row.id, InteractionSession.status == SessionStatus.open.value)
        .values(status=SessionStatus.committed.value)
    )
    db.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise Problem(409, "the session was committed or closed meanwhile", code="session_committed")
    try:
        labels, like, values = interactive.merged_labels(settings, job.id, base, mask, value)
        base_row = db.scalar(
            select(LabelVersion).where(LabelVersion.job_id == job.id, LabelVersion.version == base)
        )
        names = {
            k: n for k, n in ((base_row.label_names or {}) if base_row else {}).items() if int(k) in values
        }
        if name is not None:
            names[str(value)] = name
        provenance = {
            "session_id": row.id,
            "engine": row.engine,
            "prompts": list(row.prompts),
            "target": {"label": value, "name": name},
            "base_version": base,
            "mode": "replace",
        }
        version = save_version(
            settings, job.id, labels, like, key.id, body.comment, values, names or None, provenance
        )
    except BaseException:
        db.execute(update(InteractionSession).where(InteractionSession.id == row.id).values(status="open"))
        db.commit()
        raise
    db.refresh(row)
    row.committed_version = version.version
    end(db, row, SessionStatus.committed, settings.jobs_dir)
    return version_public(version)


@router.delete(
    "/{job_id}/interactions/{session_id}",
    response_model=SessionPublic,
    summary="Close a session without committing (its memory and mask are freed)",
    responses=_ERRORS,
)
def close(
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, _key: CanInteract
) -> SessionPublic:
    _, row = _session(db, settings, job_id, session_id)
    end(db, row, SessionStatus.closed, settings.jobs_dir)
    return _public(row)
