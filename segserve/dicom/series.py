"""DICOM series reading with pydicom: grouping, geometry checks, slice sorting, rescaling, LPS -> RAS.

Objects are read in two passes so that memory stays bounded: the first pass reads each object's header (pixel
data dropped at once) to group, validate and sort; the second decodes the pixel data of the chosen slices,
in slice order, straight into the output volume. Decoding of compressed transfer syntaxes goes through
pydicom's pixel handlers (the pylibjpeg plugins: JPEG, JPEG-LS, JPEG 2000, RLE).

Nothing identifying (patient name, ID, birth date, ...) is ever put in messages, logs or `Volume.meta`.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from segserve.dicom.geometry import (
    Geometry,
    Plane,
    as_int,
    assemble_geometry,
    classic_plane,
    enhanced_planes,
)
from segserve.imaging._common import check_voxel_count, fmt_shape
from segserve.imaging.errors import CorruptImage, ImageError, InvalidSeries, NotVolumetric
from segserve.imaging.volume import Volume

log = logging.getLogger(__name__)


_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Objects that carry pixel data but are not image slices of a scan: they are skipped, like a DICOMDIR.
_NON_IMAGE_MODALITIES = {
    "SEG": "segmentation (SEG)",
    "RTSTRUCT": "RT structure set",
    "RTPLAN": "RT plan",
    "RTDOSE": "RT dose",
    "SR": "structured report (SR)",
    "PR": "presentation state",
    "KO": "key object selection",
    "REG": "registration",
}


class DicomSource(Protocol):
    """Where one DICOM object comes from: a file on disk or a zip member.

    `label` names it for messages without its client-given name (e.g. "file 3 of 40", "zip entry 7");
    `open()` returns a readable binary stream that the caller closes.
    """

    @property
    def label(self) -> str: ...

    def open(self) -> AbstractContextManager[IO[bytes]]: ...


@dataclass(frozen=True)
class FileSource:
    """A DICOM file on disk."""

    path: Path
    label: str

    def open(self) -> AbstractContextManager[IO[bytes]]:
        return open(self.path, "rb")


@dataclass
class _Object:
    """Pass-1 facts about one DICOM object (its header only; pixel data dropped)."""

    source: DicomSource
    ds: Dataset
    n_frames: int


def read_dicom_series(sources: Sequence[DicomSource]) -> Volume:
    """Assemble the DICOM objects in `sources` (one series) into a 3D Volume.

    Returns array shape (Columns, Rows, n_slices): I = column index, J = row index, K = slice in ascending
    order along the slice normal cross(row cosine, column cosine). dtype int16 when every slice has
    RescaleSlope 1 and an integral RescaleIntercept and the rescaled values fit, else float32 (values in the
    modality's units, e.g. HU for CT). The affine maps (i, j, k) to RAS+ mm. DICOMDIRs and non-image objects
    (no pixel data; SEG, SR, RT objects) are skipped.

    Raises InvalidSeries (several series, mixed orientations or sizes, duplicate positions, missing slices,
    non-uniform spacing, gantry tilt, no image slices), NotVolumetric (a single 2D slice), CorruptImage
    (unreadable files, damaged pixel data), ImageError (colour images, unsupported multi-frame objects).
    """
    if not sources:
        raise ImageError("no DICOM files were given", code="no_files")
    objects, skipped = _read_headers(sources)
    if not objects:
        found = _describe_counts(skipped) or "nothing"
        raise InvalidSeries(f"the upload holds no DICOM image slices (found {found})")
    series = _pick_single_series(objects)
    planes = _planes_of(series)
    if len(planes) < 2:
        first = series[0].ds
        raise NotVolumetric(
            f"the upload holds a single 2D slice ({int(first.Columns)}x{int(first.Rows)}); "
            "segmentation needs a 3D volume: send all slices of the series"
        )
    geometry = assemble_geometry(planes)
    array = _load_pixels(series, planes, geometry.order)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.affine_lps
    meta = _series_meta(series, planes, geometry, array, skipped)
    log.debug("read DICOM series: %d slices, %s", len(planes), meta["transfer_syntax"])
    return Volume(array=array, affine=affine, source_format="dicom", meta=meta, header=None)


# ------------------------------------------------------------------------------------------ pass 1: headers


def _read_headers(sources: Sequence[DicomSource]) -> tuple[list[_Object], Counter[str]]:
    objects: list[_Object] = []
    skipped: Counter[str] = Counter()
    for source in sources:
        ds = _dcmread(source)
        kind = _non_image_kind(ds, source.label)
        if kind is not None:
            skipped[kind] += 1
            continue
        for keyword in _PIXEL_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        n_frames = as_int(ds.get("NumberOfFrames"), 1)
        objects.append(_Object(source=source, ds=ds, n_frames=max(n_frames, 1)))
    return objects, skipped


def _dcmread(source: DicomSource, *, stop_before_pixels: bool = False) -> Dataset:
    """Read one object; `force=True` only as a fallback for files without the preamble and "DICM"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd VRs, empty character sets, ... are read as best pydicom can
        try:
            with source.open() as fh:
                try:
                    return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
                except InvalidDicomError:
                    fh.seek(0)
                    ds = pydicom.dcmread(fh, force=True, stop_before_pixels=stop_before_pixels)
                    if "SOPClassUID" not in ds and "Modality" not in ds and "Rows" not in ds:
                        raise CorruptImage(f"{source.label} is not a readable DICOM file") from None
                    return ds
        except ImageError:
            raise
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptImage(
                f"{source.label} is not a readable DICOM file: it is truncated or damaged "
                f"({type(exc).__name__})"
            ) from exc


def _non_image_kind(ds: Dataset, label: str) -> str | None:
    """Why `ds` is not an image slice ("DICOMDIR", "segmentation (SEG)", ...), or None when it is one.

    Raises CorruptImage for a data set that is empty, or that describes an image but has no pixel data:
    pydicom reads a truncated file without complaint, and such a slice must not be skipped silently.
    """
    file_meta = getattr(ds, "file_meta", None) or Dataset()
    sop_class = str(ds.get("SOPClassUID", "") or file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "DICOMDIR"
    modality = str(ds.get("Modality", "")).upper()
    if modality in _NON_IMAGE_MODALITIES:
        return _NON_IMAGE_MODALITIES[modality]
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        if len(ds) == 0 or "Rows" in ds or "ImagePositionPatient" in ds:
            raise CorruptImage(f"{label} is truncated or damaged: it holds no (complete) pixel data")
        return f"{modality or 'DICOM'} object without pixel data"
    return None


def why_not_an_image(ds: Dataset) -> str | None:
    """Why the DICOM object `ds` (its header is enough) cannot be a slice of a scan, in words without
    patient data ("a segmentation (SEG)", "a DICOMDIR", "it is truncated ..."), or None when it can be.
    The same rules the series reader applies when it skips or refuses objects."""
    try:
        kind = _non_image_kind(ds, "the instance")
    except CorruptImage as exc:
        return str(exc)
    return None if kind is None else f"it is a {kind}, not an image slice"


def _pick_single_series(objects: list[_Object]) -> list[_Object]:
    groups: dict[str, list[_Object]] = {}
    for obj in objects:
        groups.setdefault(str(obj.ds.get("SeriesInstanceUID", "")), []).append(obj)
    if len(groups) == 1:
        return next(iter(groups.values()))
    parts = []
    for members in groups.values():
        ds = members[0].ds
        number = ds.get("SeriesNumber")
        name = f"series {number}" if number not in (None, "") else "an unnumbered series"
        modality = str(ds.get("Modality", "") or "unknown modality")
        parts.append(f"{name} ({modality}, {len(members)} file{'s' if len(members) != 1 else ''})")
    raise InvalidSeries(
        f"the upload holds {len(groups)} DICOM series: {'; '.join(parts)}. Send one series at a time",
        code="multiple_series",
    )


# ------------------------------------------------------------------------------------------------ geometry


def _planes_of(series: list[_Object]) -> list[Plane]:
    multi = [o for o in series if o.n_frames > 1]
    if multi and len(series) > 1:
        raise ImageError(
            f"the series mixes {len(multi)} multi-frame object(s) with {len(series) - len(multi)} other "
            "object(s); a series made of several multi-frame objects is not supported yet",
            code="unsupported_dicom",
        )
    for obj in series:
        samples = as_int(obj.ds.get("SamplesPerPixel"), 1)
        if samples != 1:
            raise ImageError(
                f"colour DICOM images ({samples} samples per pixel, "
                f"{obj.ds.get('PhotometricInterpretation', '?')}) are not supported; send a greyscale scan",
                code="unsupported_dicom",
            )
    if multi:
        return enhanced_planes(multi[0].ds, multi[0].n_frames, multi[0].source.label)
    return [classic_plane(i, obj.ds, obj.source.label) for i, obj in enumerate(series)]


# ------------------------------------------------------------------------------------------ pass 2: pixels


def _load_pixels(series: list[_Object], planes: list[Plane], order: list[int]) -> np.ndarray:
    """Decode the planes in slice order into a (Columns, Rows, K) array and apply the modality rescale."""
    cols, rows, n = planes[0].cols, planes[0].rows, len(order)
    check_voxel_count((cols, rows, n))
    raw: np.ndarray | None = None

    def put(k: int, pixels: np.ndarray) -> None:
        nonlocal raw
        if pixels.shape != (rows, cols):
            raise CorruptImage(
                f"decoded pixel data has shape {fmt_shape(pixels.shape)}, expected {rows}x{cols}"
            )
        if raw is None:
            raw = np.empty((cols, rows, n), dtype=pixels.dtype, order="F")
        elif not np.can_cast(pixels.dtype, raw.dtype, casting="safe"):
            raw = raw.astype(np.result_type(raw.dtype, pixels.dtype), order="F")
        raw[:, :, k] = pixels.T

    if planes[0].frame is not None:  # one enhanced multi-frame object
        frames = _decode(series[0])
        if frames.ndim == 2:
            frames = frames[None]
        for k, p in enumerate(order):
            frame = planes[p].frame
            assert frame is not None
            put(k, frames[frame])
        del frames
    else:
        for k, p in enumerate(order):
            put(k, _decode(series[planes[p].obj]))
    assert raw is not None
    slopes = np.array([planes[p].slope for p in order])
    intercepts = np.array([planes[p].intercept for p in order])
    return _rescale(raw, slopes, intercepts)


def _decode(obj: _Object) -> np.ndarray:
    ds = _dcmread(obj.source)
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", "unknown")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except NotImplementedError as exc:
        raise ImageError(
            f"{obj.source.label}: the pixel data's transfer syntax {_syntax_name(syntax)} "
            "cannot be decoded here",
            code="unsupported_transfer_syntax",
        ) from exc
    except RuntimeError as exc:
        if "plugin" in str(exc) or "dependencies" in str(exc):
            raise ImageError(
                f"{obj.source.label}: no decoder is available for transfer syntax {_syntax_name(syntax)}",
                code="unsupported_transfer_syntax",
            ) from exc
        raise CorruptImage(f"{obj.source.label}: the pixel data is damaged and cannot be decoded") from exc
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as exc:
        raise CorruptImage(
            f"{obj.source.label}: the pixel data is truncated or damaged ({type(exc).__name__})"
        ) from exc


def _rescale(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply per-slice RescaleSlope/Intercept: int16 when exact and in range, else float32."""
    integral = bool(np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts)))
    if integral and np.issubdtype(raw.dtype, np.integer):
        lows = raw.min(axis=(0, 1)).astype(np.float64) + intercepts
        highs = raw.max(axis=(0, 1)).astype(np.float64) + intercepts
        info = np.iinfo(np.int16)
        if lows.min() >= info.min and highs.max() <= info.max:
            if raw.dtype == np.int16 and not np.any(intercepts):
                return raw
            out = np.empty(raw.shape, dtype=np.int16, order="F")
            for k, intercept in enumerate(intercepts):
                out[:, :, k] = raw[:, :, k].astype(np.int32) + int(intercept)
            return out
    out_f = np.empty(raw.shape, dtype=np.float32, order="F")
    for k, (slope, intercept) in enumerate(zip(slopes, intercepts, strict=True)):
        out_f[:, :, k] = raw[:, :, k].astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return out_f


# ---------------------------------------------------------------------------------------------------- meta


def _series_meta(
    series: list[_Object], planes: list[Plane], geometry: Geometry, array: np.ndarray, skipped: Counter[str]
) -> dict[str, Any]:
    ds = series[0].ds
    syntax = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    if planes[0].frame is not None:
        sop_uids = [str(ds.get("SOPInstanceUID", ""))] * len(planes)
        frame_numbers: list[int] | None = [int(planes[p].frame or 0) + 1 for p in geometry.order]
    else:
        sop_uids = [str(series[planes[p].obj].ds.get("SOPInstanceUID", "")) for p in geometry.order]
        frame_numbers = None
    number = ds.get("SeriesNumber")
    meta: dict[str, Any] = {
        "modality": str(ds.get("Modality", "")),
        "series_number": int(number) if number not in (None, "") else None,
        "n_slices": len(planes),
        "transfer_syntax": syntax,
        "transfer_syntax_name": _syntax_name(syntax),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "sop_instance_uids": sop_uids,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "spacing_mm": [planes[0].pixel_spacing[1], planes[0].pixel_spacing[0], geometry.slice_step_mm],
        "image_orientation_patient": [float(x) for x in planes[0].iop],
    }
    if frame_numbers is not None:
        meta["frame_numbers"] = frame_numbers
        meta["sop_class_uid"] = str(ds.get("SOPClassUID", ""))
    thickness = ds.get("SliceThickness")
    if thickness not in (None, ""):
        meta["slice_thickness_mm"] = float(thickness)
    if skipped:
        meta["skipped_objects"] = dict(skipped)
    return meta


# ------------------------------------------------------------------------------------------------- helpers


def _syntax_name(uid: Any) -> str:
    try:
        return f"{pydicom.uid.UID(str(uid)).name} ({uid})"
    except Exception:
        return str(uid)


def _describe_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
