"""The API's side of interaction sessions (issue #14) apart from HTTP: turning prompts in scanner coordinates
into voxel indices, asking an interactive worker for a mask and waiting for its answer, and committing a
mask as a label version. The routes are in service/api/routes/interactions.py.

Reply path: the API publishes (session id, request id) to the `interactive` queue and waits with BLPOP on
a Redis list named after the request id (segserve.interactions.reply_key), which the worker pushes its
answer to. Jobs keep Celery's settings (no result backend, results ignored); only these answers use Redis
directly, and each list expires by itself.
"""

from __future__ import annotations

import json
import uuid
from functools import lru_cache
from typing import Any

import nibabel as nib
import numpy as np
import redis
from kombu.exceptions import OperationalError

from segserve.config import Settings
from segserve.db import Job
from segserve.interactions import alive_key, mask_path, redis_client_url, reply_key
from segserve.scans.readers import read_labels
from segserve.storage import JobFiles
from service.problems import Problem
from workers.celery_app import app as celery_app
from workers.celery_app import send_interact

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # DICOM patient coordinates: x and y of RAS negated


@lru_cache(maxsize=4)
def _redis(url: str, read_timeout_s: float) -> redis.Redis:
    """A client whose reads may block for `read_timeout_s` (redis-py's default, 5 s, is shorter than a
    BLPOP for a click that must prepare a large image first)."""
    return redis.Redis.from_url(
        redis_client_url(url), socket_timeout=read_timeout_s, socket_connect_timeout=5
    )


def _broker_down() -> Problem:
    return Problem(
        503,
        "the broker does not answer; retry shortly",
        code="broker_unavailable",
        headers={"Retry-After": "5"},
    )


def result_affine(settings: Settings, job: Job) -> np.ndarray:
    """The (4, 4) voxel -> RAS mm matrix of the job's result grid (read from its NIfTI header only)."""
    image = nib.load(JobFiles(settings.jobs_dir, job.id).labels)
    return np.asarray(image.affine, dtype=np.float64)  # type: ignore[attr-defined]


def scanner_to_voxel(lps_mm: list[float], affine: np.ndarray) -> list[int]:
    """The voxel (nearest centre) at a point in DICOM patient coordinates (LPS, mm), on the grid `affine`
    maps to RAS; the inverse of how GET .../lesions reports centroids. May lie outside the image."""
    ras = np.asarray(lps_mm, dtype=np.float64) * RAS_TO_LPS
    ijk = np.linalg.solve(affine[:3, :3], ras - affine[:3, 3])
    return [int(v) for v in np.rint(ijk)]


def ask_worker(settings: Settings, session_id: str) -> dict[str, Any]:
    """Have an interactive worker compute the session's mask for its stored prompts; its answer (a dict
    with `ok`), or a 503 with Retry-After when no interactive worker runs or none answered in time."""
    if not settings.redis_url:
        raise Problem(
            503, "no broker is configured", code="no_interactive_worker", headers={"Retry-After": "10"}
        )
    timeout = settings.interactive_timeout_s
    client = _redis(settings.redis_url, timeout + 10)
    try:
        alive = client.exists(alive_key(settings.broker_key_prefix))
    except redis.RedisError:
        raise _broker_down() from None
    if not alive:
        raise Problem(
            503,
            "no interactive worker is running (`segserve worker --queue interactive`; `segserve up` starts "
            "one): clicks are not run by the job workers, so that none waits behind a long job",
            code="no_interactive_worker",
            headers={"Retry-After": "10"},
        )
    request_id = uuid.uuid4().hex
    try:
        send_interact(celery_app, session_id, request_id, expires_s=timeout)
        answer = client.blpop([reply_key(settings.broker_key_prefix, request_id)], timeout=timeout)
    except (redis.RedisError, OperationalError):
        raise _broker_down() from None
    if answer is None:
        raise Problem(
            503,
            f"no interactive worker answered within {timeout:g} s (all busy or stopping); the prompt was "
            "not applied, send it again",
            code="interactive_timeout",
            headers={"Retry-After": "5"},
        )
    result: dict[str, Any] = json.loads(answer[1])
    return result


def mask_array(settings: Settings, job_id: str, session_id: str) -> np.ndarray:
    """The session's stored mask as bool (I, J, K)."""
    image = nib.load(mask_path(settings.jobs_dir, job_id, session_id))
    return np.asarray(image.dataobj) > 0  # type: ignore[attr-defined]


def merged_labels(
    settings: Settings, job_id: str, base_version: int, mask: np.ndarray, value: int
) -> tuple[np.ndarray, Any, list[int]]:
    """Version `base_version`'s labels with every mask voxel set to `value` (whatever it was before), as
    uint8; the base volume (its grid for writing) and the label values present."""
    base = read_labels([JobFiles(settings.jobs_dir, job_id).labels_version(base_version)])
    labels = np.asarray(base.array, dtype=np.uint8).copy()
    if labels.shape != mask.shape:
        raise Problem(
            409, f"the mask {mask.shape} is not on the labels' grid {labels.shape}", code="grid_mismatch"
        )
    labels[mask] = value
    # counted in 4M-voxel pieces: np.bincount makes an 8-byte-a-voxel copy of what it is given
    flat = labels.ravel()
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, 1 << 22):
        counts += np.bincount(flat[start : start + (1 << 22)], minlength=256)
    values = [int(v) for v in np.flatnonzero(counts) if v != 0]
    return labels, base, values
