"""A job's DICOM SEG: re-read its stored DICOM files, build the SEG, write it atomically, or record why not.

The SEG itself is built by :func:`segserve.dicom.seg.build_seg`. For the API
(`GET /v1/jobs/{id}/result?format=dicom-seg`): `seg_result_path(JobFiles(...).seg)` returns the file or raises
`SegUnavailable` (`.code`, message in words). Nothing identifying is logged.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from segserve.dicom.seg import ModelCardLike, SegExportError, SegUnavailable, build_seg
from segserve.imaging.detect import detect_format
from segserve.imaging.volume import Volume
from segserve.scans.readers import read_image
from segserve.storage import is_disk_full, write_json_atomic

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ reading sources


def _iter_dicom_headers(paths: Sequence[Path]) -> Iterator[Dataset]:
    """Every readable DICOM object in `paths` (files, or the members of a .zip), without pixel data."""
    for path in paths:
        if detect_format(path) == "zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        ds = _try_read(archive.read(info))
                        if ds is not None:
                            yield ds
        else:
            ds = _try_read(path)  # from the file: the pixel data is never read
            if ds is not None:
                yield ds


def _try_read(data: bytes | Path) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            source = io.BytesIO(data) if isinstance(data, bytes) else data
            return pydicom.dcmread(source, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def read_dicom_volume_and_datasets(
    paths: Sequence[Path], volume: Volume | None = None
) -> tuple[Volume, list[Dataset]]:
    """Read a stored DICOM upload (several files, or one .zip) into (volume, datasets in slice order).

    The volume comes from `segserve.scans.readers.read_image` (its grouping, checks and slice sorting),
    unless the caller already read `paths` with it and passes that `volume` (the worker does: decoding a
    series twice would double the cost of reading it); the datasets (headers only, no pixel data) are then
    matched to its `meta["sop_instance_uids"]`, so `datasets[k]` is the source of slice K = k. For one
    enhanced multi-frame object, `datasets` is that one object and `volume.meta["frame_numbers"]` gives each
    slice's frame. Raises ImageError from the reader, and SegExportError when the input is not DICOM or an
    object cannot be found again.
    """
    if volume is None:
        volume = read_image(list(paths))
    if volume.source_format != "dicom":
        raise SegExportError("the input is not a DICOM series", code="not_dicom")
    uids: list[str] = [str(u).strip() for u in volume.meta["sop_instance_uids"]]
    blank = sum(1 for u in uids if not u)
    if blank:
        raise SegExportError(
            f"{blank} of the series' {len(uids)} images have no SOP Instance UID (blanked, as anonymised "
            "public data often is): a DICOM SEG must reference every source image by its UID, so none can "
            "be made for this series. The NIfTI result is not affected; send the series with its UIDs (or "
            "through the service's de-identification, which gives new ones) to get a SEG",
            code="source_uids_missing",
        )
    wanted: list[str] = list(dict.fromkeys(uids))  # one per multi-frame object
    by_uid: dict[str, Dataset] = {}
    want = set(wanted)
    for ds in _iter_dicom_headers(paths):
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in want:
            by_uid.setdefault(uid, ds)
    missing = [uid for uid in wanted if uid not in by_uid]
    if missing:
        raise SegExportError(
            f"{len(missing)} of the series' {len(wanted)} images could not be read again", code="sources_lost"
        )
    return volume, [by_uid[uid] for uid in wanted]


# ------------------------------------------------------------------------------------------ job export


@dataclass(frozen=True)
class InstanceCard:
    """A card-like for `build_seg` over a lesion instance volume: one segment per lesion id."""

    id: str
    version: str
    labels: Mapping[int, str]
    colors: Mapping[int, tuple[int, int, int]]


def instance_card(card: ModelCardLike, lesions: Sequence[Mapping[str, Any]]) -> InstanceCard:
    """Segments "lesion <id> (<label name>)" in the colour of the lesion's label, from a lesion table's rows
    (evaluation/lesion_report.py: each with id, label, name). Segment labels are unique, so a reader can
    tell the instances apart."""
    labels = {0: "background", **{int(r["id"]): f"lesion {int(r['id'])} ({r['name']})"[:64] for r in lesions}}
    colors = {int(r["id"]): card.colors[int(r["label"])] for r in lesions if int(r["label"]) in card.colors}
    return InstanceCard(id=card.id, version=card.version, labels=labels, colors=colors)


def _error_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".error.json")


def export_job_seg(
    job_files_image_paths: Sequence[Path],
    labels_path: Path,
    card: ModelCardLike,
    out_path: Path,
    volume: Volume | None = None,
    labels: np.ndarray | None = None,
) -> Path:
    """Write the SEG of a finished job to `out_path` atomically and return `out_path`.

    Args:
        job_files_image_paths: the job's stored image files (`JobFiles.image_paths(...)`): DICOM files of
            one series, or one .zip of it.
        labels_path: the job's result label volume (NIfTI, shape (I, J, K) on the DICOM volume's grid).
        card: the model card.
        out_path: where the SEG goes (`JobFiles.seg`).
        volume: the input as `read_image(job_files_image_paths)` returned it, when the caller has it
            (only the headers are then read again).
        labels: the label array written to `labels_path`, when the caller still holds it (only the
            NIfTI's header is then read: no second copy of the label volume in memory).

    Raises:
        ImageError (re-reading the input), SegExportError / EmptySegmentation, OSError.
    """
    volume, datasets = read_dicom_volume_and_datasets(job_files_image_paths, volume)
    image = nib.load(str(labels_path))
    if labels is None:
        labels = np.asarray(image.dataobj)  # type: ignore[attr-defined]
    if labels.shape != volume.shape:
        raise SegExportError(
            f"the result's shape {labels.shape} is not the series' shape {volume.shape}", code="grid_mismatch"
        )
    affine = np.asarray(image.affine, dtype=np.float64)  # type: ignore[attr-defined]
    if not np.allclose(affine, volume.affine, atol=1e-3):  # float32 in the NIfTI sform
        raise SegExportError("the result's affine is not the series' affine", code="grid_mismatch")
    seg = build_seg(labels, datasets, card, frame_numbers=volume.meta.get("frame_numbers"))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        seg.save_as(tmp, enforce_file_format=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    _error_path(out_path).unlink(missing_ok=True)
    return out_path


def try_export_job_seg(
    job_files_image_paths: Sequence[Path],
    labels_path: Path,
    card: ModelCardLike,
    out_path: Path,
    *,
    job_id: str = "",
    volume: Volume | None = None,
    labels: np.ndarray | None = None,
) -> Path | None:
    """`export_job_seg`, but never raising: on failure it logs (no patient data) and records the reason
    next to `out_path` (`<out_path>.error.json`: {"code", "detail"}) for `seg_result_path`; returns None."""
    try:
        return export_job_seg(job_files_image_paths, labels_path, card, out_path, volume, labels)
    except Exception as exc:
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):  # the job's time is up: that is the job's failure
            raise
        if is_disk_full(exc):  # a full disk fails the job (disk_full) rather than leaving it without its SEG
            raise
        code = getattr(exc, "code", None) or "seg_export_failed"
        if isinstance(exc, SegExportError):
            detail = str(exc)
            log.warning("job %s: no DICOM SEG (%s): %s", job_id, code, detail)
        else:
            detail = f"the DICOM SEG could not be made ({type(exc).__name__})"
            log.warning("job %s: DICOM SEG export failed (%s)", job_id, type(exc).__name__, exc_info=True)
        try:
            write_json_atomic(_error_path(out_path), {"code": code, "detail": detail})
        except OSError:
            log.warning("job %s: could not record why the SEG is missing", job_id)
        return None


def seg_result_path(seg_path: Path) -> Path:
    """The job's SEG file (`JobFiles.seg`) if it exists, for the API's `?format=dicom-seg`.

    Raises SegUnavailable with a stable `code` and a message in words: the recorded reason of a failed
    export ("empty_segmentation": all background -> answer 422; others -> 422 too), or
    "seg_not_available" when nothing was recorded (the job has not finished, or its input was not DICOM).
    """
    if seg_path.is_file():
        return seg_path
    try:
        recorded = json.loads(_error_path(seg_path).read_text(encoding="utf-8"))
        raise SegUnavailable(str(recorded["detail"]), code=str(recorded["code"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise SegUnavailable(
            "no DICOM SEG for this job: SEGs are made only for finished jobs whose input was a DICOM series",
            code="seg_not_available",
        ) from None
