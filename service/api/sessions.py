"""Request and answer schemas of the interaction-session routes (service/api/routes/interactions.py), and
the checks that turn a request into what a session stores: a prompt in voxel indices, a label target."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import BaseModel, Field, model_validator
from sqlalchemy.orm import Session

from models.catalog import Catalog
from models.interactive.codec import prompt_from_json
from models.interactive.prompts import PromptError, check_prompts
from segserve.config import Settings
from segserve.db import Job
from segserve.interactions import InteractionSession
from service import interactive
from service.api.routes.reviews import card_labels, named_labels
from service.problems import Problem

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


def resolve_target(target: Target, catalog: Catalog, session: Session, job: Job) -> tuple[int, str | None]:
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


def voxel_index(point: list[float], coordinates: str, affine: Any, what: str) -> list[int]:
    if coordinates == "scanner":
        return interactive.scanner_to_voxel(point, affine)
    if not all(float(v).is_integer() for v in point):
        raise Problem(422, f"{what} {point}: voxel coordinates must be integers", code="invalid_prompt")
    return [int(v) for v in point]


def prompt_doc(body: ClickIn | BoxIn | SliceIn, job: Job, settings: Settings) -> dict[str, Any]:
    """The prompt in voxel indices (as sessions store it), or a 422 naming the prompt that does not fit."""
    shape = (int(job.image_shape[0]), int(job.image_shape[1]), int(job.image_shape[2]))
    scanner = getattr(body, "coordinates", "voxel") == "scanner"
    affine = interactive.result_affine(settings, job) if scanner else None
    doc: dict[str, Any]
    if isinstance(body, ClickIn):
        doc = {
            "type": "click",
            "point": voxel_index(body.point, body.coordinates, affine, "point"),
            "foreground": body.foreground,
        }
    elif isinstance(body, BoxIn):
        lo = voxel_index(body.lo, body.coordinates, affine, "lo")
        hi = voxel_index(body.hi, body.coordinates, affine, "hi")
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
        where = " (from scanner coordinates " + str(scanner_points(body)) + " mm LPS)" if scanner else ""
        message = str(exc).replace("prompt 0 ", "prompt ", 1)
        code = "prompt_outside_volume" if "outside" in message else "invalid_prompt"
        raise Problem(422, f"{message}{where}", code=code) from None
    return doc


def scanner_points(body: ClickIn | BoxIn | SliceIn) -> list[list[float]]:
    return (
        [body.point] if isinstance(body, ClickIn) else [body.lo, body.hi] if isinstance(body, BoxIn) else []
    )


def mask_url(row: InteractionSession) -> str:
    """Where the session's current mask is fetched; the prompt count makes each mask's URL its own."""
    return f"/v1/jobs/{row.job_id}/interactions/{row.id}/mask?prompts={len(row.mask_prompts or [])}"


def session_public(row: InteractionSession) -> SessionPublic:
    """The answer for a session row: its state, prompts and, while open with a mask, the mask's URL."""
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
        mask_url=mask_url(row) if row.mask_prompts is not None and row.status == "open" else None,
        committed_version=row.committed_version,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
    )
