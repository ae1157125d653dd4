"""Where a job's files live. Everything is under `<data_dir>/jobs/<job id>/`:

    input/image/...        the uploaded scan file(s), as received; for a multi-channel model one folder
                           per input channel, input/image/<channel>/... (the job's input_files name the
                           first channel's files, "<channel>/0000.nii.gz", which the viewer shows)
    input/reference/...    the uploaded reference label volume, if any
    input/decoded/...      the volumes as the API decoded them while validating (segserve.scans.decoded),
                           which the worker maps instead of decoding the upload again
    result/labels.nii.gz   the label volume on the scan's grid
    result/metrics.json    per-structure metrics, when a reference was given
    result/labels.seg.dcm  the label volume as a DICOM SEG, when the input was a DICOM series
    result/lesions.json    the lesion table, when the model has lesion labels (evaluation/lesion_report.py)
    result/instances.nii.gz  the lesion instance volume (ids 1..N) on the scan's grid, with lesions.json
    result/instances.seg.dcm the instances as a DICOM SEG (one segment per lesion), for DICOM inputs

Uploads are first written to `<data_dir>/staging/<uuid>/` and moved into place with one rename once they
have been validated, so a job directory is either complete or absent.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

RESULT_LABELS = "result/labels.nii.gz"
RESULT_METRICS = "result/metrics.json"
RESULT_SEG = "result/labels.seg.dcm"
RESULT_LESIONS = "result/lesions.json"
RESULT_INSTANCES = "result/instances.nii.gz"
RESULT_INSTANCES_SEG = "result/instances.seg.dcm"


class JobFiles:
    """Paths of one job's files."""

    def __init__(self, jobs_dir: Path, job_id: str) -> None:
        self.root = jobs_dir / job_id

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def image_dir(self) -> Path:
        return self.root / "input" / "image"

    @property
    def reference_dir(self) -> Path:
        return self.root / "input" / "reference"

    @property
    def labels(self) -> Path:
        return self.root / RESULT_LABELS

    @property
    def metrics(self) -> Path:
        return self.root / RESULT_METRICS

    @property
    def lesions(self) -> Path:
        return self.root / RESULT_LESIONS

    @property
    def instances(self) -> Path:
        return self.root / RESULT_INSTANCES

    @property
    def instances_seg(self) -> Path:
        return self.root / RESULT_INSTANCES_SEG

    def labels_version(self, version: int) -> Path:
        """Version 0 is the model's result; versions 1.. are reviewers' corrections (never overwritten)."""
        return self.labels if version == 0 else self.root / "result" / f"labels.v{version}.nii.gz"

    @property
    def seg(self) -> Path:
        """The DICOM SEG of the result (DICOM inputs only; see segserve.dicom.seg)."""
        return self.root / RESULT_SEG

    def image_paths(self, names: list[str]) -> list[Path]:
        return [self.image_dir / n for n in names]

    def channel_paths(self, channel: str) -> list[Path]:
        """A multi-channel job's files of one input channel, in upload order ([] when there are none)."""
        folder = self.image_dir / channel
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def reference_paths(self, names: list[str]) -> list[Path]:
        return [self.reference_dir / n for n in names]

    def remove_results(self) -> None:
        shutil.rmtree(self.root / "result", ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def new_staging_dir(staging_dir: Path) -> Path:
    path = staging_dir / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def clean_stale_staging(staging_dir: Path, older_than_s: float = 3600.0) -> int:
    """Remove upload leftovers of requests that died mid-way; returns how many were removed."""
    if not staging_dir.exists():
        return 0
    removed = 0
    cutoff = time.time() - older_than_s
    for entry in staging_dir.iterdir():
        if entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class InsufficientSpace(Exception):
    """Writing would leave less than the reserve free on the data directory's filesystem, or the disk is full.

    `free_bytes` is what the filesystem had free for unprivileged writers when the write was refused;
    `reserve_bytes` the configured reserve (SEGSERVE_MIN_FREE_DISK_MB in bytes)."""

    def __init__(self, free_bytes: int, reserve_bytes: int) -> None:
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes
        super().__init__(
            f"not enough disk space: {free_bytes // 2**20} MiB free on the data directory's disk, "
            f"and {reserve_bytes // 2**20} MiB are kept in reserve for results; try again later"
        )


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError saying the filesystem (ENOSPC) or the user's quota (EDQUOT) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """Bytes free for unprivileged writers on the filesystem holding `path` (statvfs f_bavail)."""
    return shutil.disk_usage(path).free


class DiskReserve:
    """Keeps `reserve_bytes` free on the filesystem of `path` while an upload streams onto it.

    `require(n)` before a write of `n` bytes raises InsufficientSpace when the write would leave less than
    the reserve. The free space is read (statvfs) once and then counted down by what this upload wrote; it
    is read again whenever the count-down would cross the reserve (another process may have freed space)
    and at least every `recheck_bytes` (other writers use the same disk). A reserve of 0 checks nothing.
    """

    def __init__(self, path: Path, reserve_bytes: int, recheck_bytes: int = 8 * 2**20) -> None:
        self._path = path
        self.reserve_bytes = max(0, reserve_bytes)
        self._recheck_bytes = recheck_bytes
        self._budget: int | None = None  # bytes that may still be written before the reserve is reached
        self._since_check = 0

    def _refresh(self) -> int:
        free = free_bytes(self._path)
        self._budget = free - self.reserve_bytes
        self._since_check = 0
        return free

    def require(self, n_bytes: int) -> None:
        """Account for a write of `n_bytes` (>= 0) about to happen; InsufficientSpace if it would cross."""
        if self.reserve_bytes == 0:
            return
        if self._budget is None or self._since_check >= self._recheck_bytes or self._budget < n_bytes:
            free = self._refresh()
            assert self._budget is not None
            if self._budget < n_bytes:
                raise InsufficientSpace(free, self.reserve_bytes)
        assert self._budget is not None
        self._budget -= n_bytes
        self._since_check += n_bytes
