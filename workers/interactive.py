"""What an interactive worker does with one prompt of an interaction session (issue #14).

The API stores the session's prompt list and publishes (session id, request id) to the `interactive` queue;
`interact` reads the list, segments with the session's engine, writes the mask file and pushes a short
answer to the Redis list the API waits on (segserve.interactions.reply_key). The engine's prepared image
(normalised, converted once per image) stays in this process's `SessionCache` between clicks, bounded by
Settings.interactive_cache_mb (least recently used first) and dropped once the session is idle longer than
Settings.interactive_ttl_s or no longer open. A miss (first click, another worker took it, a restart)
prepares again from the job's stored input, read as the runner reads it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import redis
from sqlalchemy import select

from models.card import input_channels
from models.catalog import Catalog
from models.interactive.codec import prompts_from_json
from models.interactive.prompts import PromptError, check_prompts
from segserve.config import Settings
from segserve.db import Job, new_session, utcnow
from segserve.imaging.volume import Volume
from segserve.imaging.writers import write_labels_nifti
from segserve.interactions import (
    REPLY_TTL_S,
    WORKER_ALIVE_TTL_S,
    InteractionSession,
    SessionStatus,
    alive_key,
    expire_if_idle,
    mask_path,
    redis_client_url,
    reply_key,
)
from segserve.storage import JobFiles
from workers.inputs import read_job_inputs

log = logging.getLogger(__name__)

# Set by `segserve worker --queue interactive` before the worker starts (its pool processes inherit it):
# such a worker keeps the session cache and a liveness mark, and runs none of the job workers' loops.
ROLE = {"interactive": False}


@dataclass
class Prepared:
    """A session's engine input: what `engine.prepare` made (opaque, reports `nbytes`) and the job's grid
    (shape, affine, header; no voxels) that masks are written on."""

    engine_name: str
    prepared: Any
    grid: Volume
    spacing_mm: tuple[float, float, float]
    nbytes: int
    last_used: float = field(default_factory=time.monotonic)


class SessionCache:
    """Prepared images by session id, least recently used first out once their bytes exceed the budget, and
    idle ones out after `ttl_s`. Thread-safe (the sweep runs beside the task). One entry larger than the
    whole budget is still kept, alone: the session it belongs to must be able to work."""

    def __init__(self, budget_bytes: int, ttl_s: float) -> None:
        self.budget_bytes = budget_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, Prepared] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def get(self, session_id: str) -> Prepared | None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.last_used = time.monotonic()
                self._entries.move_to_end(session_id)
            return entry

    def put(self, session_id: str, entry: Prepared) -> list[str]:
        """Keep `entry`; returns the ids dropped to stay within the budget."""
        dropped = []
        with self._lock:
            self._entries[session_id] = entry
            self._entries.move_to_end(session_id)
            total = sum(e.nbytes for e in self._entries.values())
            while total > self.budget_bytes and len(self._entries) > 1:
                old_id, old = self._entries.popitem(last=False)
                total -= old.nbytes
                dropped.append(old_id)
        for old_id in dropped:
            log.info("session %s: prepared image dropped to stay within the cache budget", old_id)
        return dropped

    def drop(self, session_id: str, why: str) -> int:
        """Forget a session; returns the bytes freed (0 when it was not here)."""
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            return 0
        log.info("session %s: %s; freed %d bytes of its prepared image", session_id, why, entry.nbytes)
        return entry.nbytes

    def drop_idle(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [sid for sid, e in self._entries.items() if now - e.last_used > self.ttl_s]
        for sid in idle:
            self.drop(sid, f"idle for more than {self.ttl_s:g} s (expired)")
        return idle


_cache: SessionCache | None = None
_cache_lock = threading.Lock()


def cache_for(settings: Settings) -> SessionCache:
    """This process's cache, made at the first use, with its sweep thread."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = SessionCache(settings.interactive_cache_mb * 2**20, settings.interactive_ttl_s)
            threading.Thread(
                target=_sweep, args=(settings, _cache), name="session-sweep", daemon=True
            ).start()
        return _cache


def _sweep(settings: Settings, cache: SessionCache) -> None:
    """Drop what no session needs any more: idle entries, and those of sessions that were committed,
    closed or expired; and mark every open session past its expiry expired (its files deleted), whichever
    worker had it."""
    interval = max(0.5, min(5.0, settings.interactive_ttl_s / 3))
    while True:
        time.sleep(interval)
        try:
            cache.drop_idle()
            ids = cache.ids()
            with new_session(settings.resolved_database_url) as db:
                # Every open session past its expiry, cached here or not: marked expired, files deleted.
                idle = db.scalars(
                    select(InteractionSession).where(
                        InteractionSession.status == SessionStatus.open.value,
                        InteractionSession.expires_at < utcnow(),
                    )
                ).all()
                for row in idle:
                    expire_if_idle(db, row, settings.jobs_dir)
                if not ids:
                    continue
                rows = db.scalars(select(InteractionSession).where(InteractionSession.id.in_(ids))).all()
                states = {row.id: row.status for row in rows}
            for sid in ids:
                status = states.get(sid)
                if status != SessionStatus.open.value:
                    cache.drop(sid, f"session {status or 'deleted'}")
        except Exception:  # a database hiccup: the next sweep tries again
            log.warning("session sweep failed", exc_info=True)


def keep_alive(settings: Settings, stop: threading.Event) -> None:
    """Refresh the mark that tells the API an interactive worker runs (until `stop`)."""
    client = redis.Redis.from_url(redis_client_url(settings.redis_url or ""))
    key = alive_key(settings.broker_key_prefix)
    while True:
        try:
            client.set(key, "1", ex=WORKER_ALIVE_TTL_S)
        except redis.RedisError:
            log.warning("could not refresh the interactive worker's liveness mark", exc_info=True)
        if stop.wait(WORKER_ALIVE_TTL_S / 3):
            client.close()
            return


@lru_cache(maxsize=8)
def _engine(name: str, models_dir: Path) -> Any:
    """One engine object per name per process (a model engine loads its weights once)."""
    from models.interactive.engines import get_engine  # the model engines import torch: workers only

    return get_engine(name, models_dir)


def _prepare(settings: Settings, job: Job, engine: Any) -> Prepared:
    """Read the job's stored input as the runner does (workers.inputs; a multi-channel job's first
    channel) and prepare it."""
    files = JobFiles(settings.jobs_dir, job.id)
    card = Catalog(settings.resolved_models_dir).card(job.model_id)
    image = read_job_inputs(job, files, input_channels(card), reference=False, first_only=True).image
    prepared = engine.prepare(image.array, image.spacing_mm, affine=image.affine)
    # The grid without voxels: a zero-stride view of the image's shape is all a mask writer needs.
    grid = Volume(
        array=np.broadcast_to(np.zeros(1, np.uint8), image.shape),
        affine=image.affine,
        source_format=image.source_format,
        header=image.header,
    )
    return Prepared(engine.name, prepared, grid, image.spacing_mm, int(prepared.nbytes))


class _Refused(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.answer = {"ok": False, "status": status, "code": code, "detail": detail}


def _compute(settings: Settings, session_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    with new_session(settings.resolved_database_url) as db:
        row = db.get(InteractionSession, session_id)
        if row is None:
            raise _Refused(404, "session_not_found", f"no interaction session '{session_id}'")
        if expire_if_idle(db, row, settings.jobs_dir) or row.status != SessionStatus.open.value:
            raise _Refused(409, f"session_{row.status}", f"the session is {row.status}")
        job = db.get(Job, row.job_id)
        if job is None or job.files_deleted_at is not None:
            raise _Refused(410, "files_deleted", "the job's files are gone")
        db.expunge(job)
        docs, engine_name = list(row.prompts), row.engine
    cache = cache_for(settings)
    entry = cache.get(session_id)
    engine = _engine(engine_name, Path(settings.resolved_models_dir))
    if entry is None:
        log.info(
            "session %s: prepared image not in this worker's cache (first prompt, another worker or a "
            "restart): preparing it from job %s's stored input",
            session_id,
            job.id,
        )
        entry = _prepare(settings, job, engine)
        cache.put(session_id, entry)
        prepared_now = True
    else:
        prepared_now = False
    shape = entry.grid.shape
    try:
        prompts = prompts_from_json(docs, shape)
        check_prompts(prompts, shape)
        mask = engine.segment(entry.prepared, prompts) if prompts else np.zeros(shape, dtype=bool)
    except PromptError as exc:
        raise _Refused(422, "invalid_prompt", str(exc)) from None
    path = mask_path(settings.jobs_dir, job.id, session_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_labels_nifti(mask.astype(np.uint8), entry.grid, path)
    with new_session(settings.resolved_database_url) as db:
        row = db.get(InteractionSession, session_id)
        if row is not None:
            row.mask_prompts = docs
            db.commit()
    return {
        "ok": True,
        **mask_summary(mask, entry.spacing_mm),
        "prompt_count": len(docs),
        "prepared": prepared_now,
        "seconds": round(time.perf_counter() - started, 4),
    }


def mask_summary(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> dict[str, Any]:
    """Voxel count, volume (ml) and bounding box (start inclusive, stop exclusive, voxel indices; None for
    an empty mask) of a bool mask (I, J, K) with voxel size `spacing_mm`."""
    voxels = int(np.count_nonzero(mask))
    bbox = None
    if voxels:
        bounds = []
        for axis in range(3):
            present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            bounds.append((int(present[0]), int(present[-1]) + 1))
        bbox = {"start": [b[0] for b in bounds], "stop": [b[1] for b in bounds]}
    volume_ml = voxels * float(np.prod(spacing_mm)) / 1000.0
    return {"voxels": voxels, "volume_ml": volume_ml, "bbox": bbox}


def interact(settings: Settings, session_id: str, request_id: str) -> str:
    """Compute a session's mask for its current prompts and answer on the request's reply list. Any
    failure is answered too (a 4xx for a refused prompt or session, else 500), so the API never waits
    for its timeout on an error."""
    try:
        answer = _compute(settings, session_id)
    except _Refused as refused:
        answer = refused.answer
    except Exception as exc:
        log.error("session %s: prompt failed", session_id, exc_info=True)
        answer = {"ok": False, "status": 500, "code": "interactive_error", "detail": type(exc).__name__}
    client = redis.Redis.from_url(redis_client_url(settings.redis_url or ""))
    try:
        key = reply_key(settings.broker_key_prefix, request_id)
        with client.pipeline() as pipe:
            pipe.rpush(key, json.dumps(answer))
            pipe.expire(key, REPLY_TTL_S)
            pipe.execute()
    finally:
        client.close()
    return "ok" if answer["ok"] else str(answer["code"])
