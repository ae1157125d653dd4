"""Interaction sessions (semi-automatic segmentation, issue #14) on a succeeded job:
create one, post prompts (clicks, boxes, painted slices; voxel indices or scanner coordinates), undo, fetch
the current mask (NIfTI on the job's result grid), commit it as a new label version, close it.

Each prompt is answered within the request: the mask is computed by an interactive worker on its own
queue (service/interactive.py, workers/interactive.py), which keeps the session's prepared image between
clicks. The mask is a function of the prompt list alone, so undo drops the last prompt and segments again.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from segserve.config import Settings
from segserve.db import ApiKey, Job, LabelVersion
from segserve.interactions import (
    InteractionSession,
    SessionStatus,
    end,
    expire_if_idle,
    mask_path,
    set_prompts,
    touch,
)
from segserve.security import Role
from service import interactive
from service.api.deps import CatalogDep, SessionDep, SettingsDep, require
from service.api.lookup import job_with_files, require_succeeded
from service.api.routes.reviews import LabelVersionPublic, save_version, version_public
from service.api.sessions import (
    Bbox,
    CommitIn,
    MaskSummary,
    PromptIn,
    SessionCreate,
    SessionPublic,
    Target,
    mask_url,
    prompt_doc,
    resolve_target,
    session_public,
)
from service.problems import Problem

router = APIRouter(prefix="/v1/jobs", tags=["interactions"])
CanInteract = Annotated[ApiKey, Depends(require("reviews:write"))]
_ERRORS: dict[int | str, dict[str, Any]] = {403: {}, 404: {}, 409: {}, 410: {}, 422: {}}
_WORKER_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 503: {}}


def _session(
    db: Session,
    settings: Settings,
    job_id: str,
    session_id: str,
    key: ApiKey | None = None,
    *,
    open_only: bool = True,
) -> tuple[Job, InteractionSession]:
    """The job (404, 410 files_deleted) and its session (404 for an unknown one or another job's). With
    `key`: 403 session_not_yours unless that key opened the session or is an admin's (a reviewer's clicks
    and commit are theirs alone). With `open_only`: 410 session_expired, 409 session_committed /
    session_closed."""
    job = job_with_files(db, job_id)
    row = db.get(InteractionSession, session_id)
    if row is None or row.job_id != job.id:
        raise Problem(
            404, f"job '{job_id}' has no interaction session '{session_id}'", code="session_not_found"
        )
    if key is not None and key.id != row.key_id and key.role != Role.admin.value:
        raise Problem(
            403,
            f"the session was opened by another API key ({row.key_id}); only that key or an admin may "
            "prompt, read its mask, commit or close it: open your own session on the job",
            code="session_not_yours",
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


def _run(
    db: Session, settings: Settings, row: InteractionSession, restore: list[dict[str, Any]]
) -> MaskSummary:
    """Ask a worker for the mask of the session's stored prompts; on a refusal or 503, put the prompt list
    back to `restore` (what it was before this call) so the session stays as the reviewer last saw it."""
    changed = list(row.prompts)
    try:
        answer = interactive.ask_worker(settings, row.id)
    except Problem:
        _restore(db, settings, row, changed, restore)
        raise
    if not answer.get("ok"):
        _restore(db, settings, row, changed, restore)
        raise Problem(int(answer["status"]), str(answer["detail"]), code=str(answer["code"]))
    db.refresh(row)
    return MaskSummary(
        session_id=row.id,
        job_id=row.job_id,
        prompt_count=int(answer["prompt_count"]),
        voxels=int(answer["voxels"]),
        volume_ml=float(answer["volume_ml"]),
        bbox=Bbox(**answer["bbox"]) if answer["bbox"] else None,
        mask_url=mask_url(row),
        seconds=float(answer["seconds"]),
        prepared=bool(answer["prepared"]),
    )


def _restore(
    db: Session, settings: Settings, row: InteractionSession, changed: list[Any], restore: list[Any]
) -> None:
    db.refresh(row)
    if row.prompts == changed:  # nobody changed it since (else theirs stands)
        set_prompts(db, row, restore, settings.interactive_ttl_s)


def _change_prompts(db: Session, settings: Settings, row: InteractionSession, prompts: list[Any]) -> None:
    if not set_prompts(db, row, prompts, settings.interactive_ttl_s):
        raise Problem(
            409,
            "the session changed while this call was made (another prompt, an undo, a commit or a close): "
            "get it again (GET .../interactions/{id}) and retry",
            code="session_busy",
        )


def _engine_names(settings: Settings) -> list[str]:
    from models.interactive.engines import engine_names

    return list(engine_names(settings.resolved_models_dir))


engines_router = APIRouter(prefix="/v1/interactive", tags=["interactions"])


@engines_router.get("/engines", summary="The interactive engines a session may use")
def get_engines(settings: SettingsDep, _key: CanInteract) -> dict[str, list[str]]:
    """ "classical" (no weights), then the model engines installed: "deepedit:<model id>" (a DeepEdit
    bundle; "deepedit:<model id>:<label>" picks one of its labels) and "nninteractive"."""
    return {"engines": _engine_names(settings)}


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
    """Open a session (reviewer, admin). 404 unknown job, 409 job not succeeded, 410 its files deleted,
    422 unknown engine or target. The session expires after SEGSERVE_INTERACTIVE_TTL_S without a call."""
    body = body or SessionCreate()
    job = job_with_files(db, job_id)
    require_succeeded(job)
    from models.interactive.engines import is_engine_name

    if not is_engine_name(body.engine, settings.resolved_models_dir):
        engines = _engine_names(settings)
        raise Problem(
            422, f"unknown engine '{body.engine}'; engines: {', '.join(engines)}", code="unknown_engine"
        )
    value, name = resolve_target(body.target, catalog, db, job) if body.target else (None, None)
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
    return session_public(row)


@router.get(
    "/{job_id}/interactions/{session_id}",
    response_model=SessionPublic,
    summary="A session's state and prompts",
    responses={404: {}, 410: {}},
)
def get_session(
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, _key: CanInteract
) -> SessionPublic:
    """Any state (open, committed, closed, expired), with the prompts in voxel indices."""
    return session_public(_session(db, settings, job_id, session_id, open_only=False)[1])


@router.post(
    "/{job_id}/interactions/{session_id}/prompts",
    response_model=MaskSummary,
    summary="Add a prompt (click, box or painted slice) and get the refined mask's summary",
    responses=_WORKER_ERRORS,
)
def post_prompt(
    job_id: str, session_id: str, body: PromptIn, db: SessionDep, settings: SettingsDep, key: CanInteract
) -> MaskSummary:
    """A click `{"type": "click", "point": [i, j, k], "foreground": true}`, a box `{"type": "box", "lo",
    "hi"}` (inclusive corners, drawn on one slice) or painted pixels of a slice `{"type": "slice", "axis",
    "index", "pixels": [[u, v], ...]}`; `"coordinates": "scanner"` for points in mm (LPS). Answers the
    mask's voxel count, volume (ml), bounding box and URL. 422 `prompt_outside_volume` naming the prompt,
    404 a session of another job, 409/410 a session no longer open, 503 (Retry-After) when no interactive
    worker answers; a refused prompt is not kept."""
    job, row = _session(db, settings, job_id, session_id, key)
    doc = prompt_doc(body, job, settings)
    before = list(row.prompts)
    _change_prompts(db, settings, row, [*before, doc])
    return _run(db, settings, row, before)


@router.post(
    "/{job_id}/interactions/{session_id}/undo",
    response_model=MaskSummary,
    summary="Drop the last prompt and get the mask of the others",
    responses=_WORKER_ERRORS,
)
def undo(
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, key: CanInteract
) -> MaskSummary:
    """The mask of the prompts without the last one (exactly what it was before that prompt); 409
    `nothing_to_undo` when there is none."""
    _, row = _session(db, settings, job_id, session_id, key)
    before = list(row.prompts)
    if not before:
        raise Problem(409, "the session has no prompt to undo", code="nothing_to_undo")
    _change_prompts(db, settings, row, before[:-1])
    return _run(db, settings, row, before)


@router.get(
    "/{job_id}/interactions/{session_id}/mask",
    response_class=FileResponse,
    summary="The current mask (.nii.gz, uint8 0/1 on the job's result grid)",
    responses={200: {"content": {"application/gzip": {}}}, **_ERRORS},
)
def get_mask(
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, key: CanInteract
) -> FileResponse:
    """uint8 0/1 with the result's shape and affine (`X-Prompt-Count`: the prompts it is made of); 404
    `no_mask` before the first prompt."""
    job, row = _session(db, settings, job_id, session_id, key)
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
    """The mask's voxels take the target's value (replacing what was there) in a copy of the base version
    (default the latest); saved as a new version with who, when, the engine and the prompts. A new label
    (`{"target": {"name": ...}}`) is named in the version's `label_names`. 422 `empty_mask`,
    `missing_target`, `unknown_label`, `label_name_exists`, `label_value_taken`; 409 `mask_not_current`
    while a prompt is in flight. The session ends (committed)."""
    body = body or CommitIn()
    job, row = _session(db, settings, job_id, session_id, key)
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
    value, name = resolve_target(target, catalog, db, job)
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
    job_id: str, session_id: str, db: SessionDep, settings: SettingsDep, key: CanInteract
) -> SessionPublic:
    """The session ends without a version; its mask file is deleted and the interactive worker drops its
    prepared image at its next sweep."""
    _, row = _session(db, settings, job_id, session_id, key)
    end(db, row, SessionStatus.closed, settings.jobs_dir)
    return session_public(row)
