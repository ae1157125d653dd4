"""Public entry points for reading uploads: detect_format, read_image, read_labels, check_same_grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from segserve.dicom.series import FileSource, read_dicom_series
from segserve.imaging._common import check_voxels
from segserve.imaging.detect import ACCEPTED_FORMATS, detect_format
from segserve.imaging.errors import GridMismatch, ImageError, UnsupportedFormat
from segserve.imaging.nifti import read_nifti
from segserve.imaging.nrrd import read_nrrd
from segserve.imaging.volume import Volume
from segserve.scans.archive import read_zip

__all__ = ["check_same_grid", "detect_format", "read_channels", "read_image", "read_labels"]

_FORMAT_NAMES = {
    "nifti": "a NIfTI volume",
    "mgz": "an MGZ volume",
    "nrrd": "an NRRD volume",
    "zip": "a zip archive",
}


def read_image(paths: Sequence[Path]) -> Volume:
    """Read one uploaded image into a 3D Volume (array (I, J, K), affine voxel -> RAS+ mm).

    `paths` is either one file (NIfTI, MGZ, NRRD, a single multi-frame DICOM object, or a .zip holding one
    DICOM series or one volume) or several files that are each one DICOM object of the same series. Raises
    an ImageError subclass (UnsupportedFormat, CorruptImage, NotVolumetric, InvalidSeries, ...) for unusable
    input, and ImageError for voxels that are not one finite real number each (RGB, complex, NaN,
    infinity: segserve.imaging._common.check_voxels).
    """
    volume = _read_volume(paths)
    check_voxels(volume.array)
    return volume


def _read_volume(paths: Sequence[Path]) -> Volume:
    """`read_image` without the voxel check (reference labels have checks of their own)."""
    files = [Path(p) for p in paths]
    if not files:
        raise ImageError("no file was uploaded", code="no_files")
    if len(files) == 1:
        fmt = detect_format(files[0])
        if fmt == "zip":
            return read_zip(files[0], read_single_volume)
        if fmt == "dicom":
            return read_dicom_series([FileSource(files[0], "the file")])
        return read_single_volume(files[0], fmt)
    sources = []
    for n, path in enumerate(files, start=1):
        label = f"file {n} of {len(files)}"
        try:
            fmt = detect_format(path)
        except UnsupportedFormat as exc:
            raise UnsupportedFormat(f"{label}: {exc}") from exc
        if fmt != "dicom":
            raise UnsupportedFormat(
                f"{label} is {_FORMAT_NAMES.get(fmt, fmt)}: several files are accepted only as the DICOM "
                f"files of one series. Accepted formats: {ACCEPTED_FORMATS}."
            )
        sources.append(FileSource(path, label))
    return read_dicom_series(sources)


def read_channels(channels: Sequence[tuple[str, Sequence[Path]]]) -> list[Volume]:
    """Read the input channels of one case (e.g. BraTS's T1c, T1, T2, FLAIR), each like `read_image`.

    `channels` is (channel name, that channel's files) in the model's order. Every channel must lie on
    the first one's grid (`check_same_grid`). An ImageError names the channel ("channel 'flair': ...").
    """
    volumes: list[Volume] = []
    for name, paths in channels:
        try:
            volume = read_image(paths)
        except ImageError as exc:
            raise type(exc)(f"channel '{name}': {exc}", code=exc.code) from None
        if volumes:
            first = channels[0][0]
            check_same_grid(volumes[0], volume, names=(f"channel '{name}'", f"channel '{first}'"))
        volumes.append(volume)
    return volumes


def read_labels(paths: Sequence[Path]) -> Volume:
    """Read a reference label volume with the readers of `read_image`.

    Values must be non-negative integers; float arrays holding integral values are accepted. The result's
    array dtype is the smallest unsigned integer type that holds the labels (uint8, else uint16) and meta
    gains "label_values" (the sorted label values present). Raises ImageError for negative, non-integral,
    non-finite or too large (> 65535) values.
    """
    volume = _read_volume(paths)
    labels = to_label_array(volume.array)
    meta = dict(volume.meta)
    meta["dtype"] = str(labels.dtype)
    meta["label_values"] = label_values(labels)
    return replace(volume, array=labels, meta=meta)


#: Label maps are counted in pieces of this many voxels: np.bincount takes its input as intp, 8 bytes a voxel.
_COUNT_CHUNK = 1 << 22


def label_values(labels: np.ndarray) -> list[int]:
    """The sorted values present in an unsigned integer label array (uint8 / uint16), counted in pieces."""
    flat = labels.ravel(order="K")  # a view for C- or F-ordered arrays
    top = int(flat.max(initial=0))
    counts = np.zeros(top + 1, dtype=np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        counts += np.bincount(flat[start : start + _COUNT_CHUNK], minlength=top + 1)
    return [int(v) for v in np.nonzero(counts)[0]]


def to_label_array(array: np.ndarray) -> np.ndarray:
    """Cast an (I, J, K) array of label values to uint8/uint16, or raise ImageError (see `read_labels`)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageError(f"label volumes must hold integers, not {array.dtype} values", code="invalid_labels")
    if array.size == 0:
        raise ImageError("the label volume is empty", code="invalid_labels")
    if np.issubdtype(array.dtype, np.floating):
        # in slabs along the first axis (C order overall, as one whole-array mask would be): no full-size
        # float copy or mask
        step = max(1, _COUNT_CHUNK // max(1, array[:1].size))
        slabs = [array[i : i + step] for i in range(0, array.shape[0], step)]
        if not all(np.all(np.isfinite(slab)) for slab in slabs):
            raise ImageError("the label volume holds NaN or infinite values", code="invalid_labels")
        for slab in slabs:
            fractional = slab != np.round(slab)
            if np.any(fractional):
                example = float(slab[fractional].flat[0])
                raise ImageError(
                    f"the label volume holds non-integral values (e.g. {example:g}); labels must be integers "
                    "(was an intensity image sent as the reference?)",
                    code="invalid_labels",
                )
    low, high = array.min(), array.max()
    if low < 0:
        raise ImageError(
            f"the label volume holds negative values (minimum {low:g}); labels must be 0 or positive",
            code="invalid_labels",
        )
    if high > np.iinfo(np.uint16).max:
        raise ImageError(
            f"the label volume holds values up to {high:g}; at most 65535 is supported",
            code="invalid_labels",
        )
    target = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    return array.astype(target, copy=array.dtype != target)


def check_same_grid(
    image: Volume,
    reference: Volume,
    *,
    atol_mm: float = 1e-3,
    names: tuple[str, str] = ("reference", "image"),
) -> None:
    """Raise GridMismatch unless `reference` lies on exactly the grid of `image`.

    Same shape is required, and the world positions (RAS mm) of the 8 corner voxels under the two affines
    may differ by at most `atol_mm`. The message names both grids ("reference grid 128x128x64 at
    1.00x1.00x2.00 mm does not match image grid 256x256x256 at 1.00x1.00x1.00 mm") and, for equal shapes,
    how far apart the grids are in mm and how their orientation/origin differ. `names` are what the
    message calls `reference` and `image` (e.g. ("channel 't1'", "channel 't1c'")).
    """
    ref_grid, img_grid = _describe_grid(reference), _describe_grid(image)
    ref_name, img_name = names
    if reference.shape != image.shape:
        raise GridMismatch(f"{ref_name} grid {ref_grid} does not match {img_name} grid {img_grid}")
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (0, image.shape[0] - 1)
            for j in (0, image.shape[1] - 1)
            for k in (0, image.shape[2] - 1)
        ]
    ).T
    distance = float(
        np.max(np.linalg.norm((image.affine @ corners - reference.affine @ corners)[:3], axis=0))
    )
    if not distance <= atol_mm:  # also catches NaN
        details = []
        img_codes = "".join(nib.aff2axcodes(image.affine))
        ref_codes = "".join(nib.aff2axcodes(reference.affine))
        if img_codes != ref_codes:
            details.append(f"orientation {ref_codes} vs {img_codes}")
        origin_shift = float(np.linalg.norm(image.affine[:3, 3] - reference.affine[:3, 3]))
        if origin_shift > atol_mm:
            details.append(f"origins {origin_shift:.2f} mm apart")
        extra = f" ({', '.join(details)})" if details else ""
        raise GridMismatch(
            f"{ref_name} grid {ref_grid} does not match {img_name} grid {img_grid}: the shapes agree but the "
            f"affines differ, placing voxels up to {distance:.3g} mm apart{extra} (tolerance {atol_mm:g} mm)"
        )


def _describe_grid(volume: Volume) -> str:
    spacing = "x".join(f"{s:.2f}" for s in volume.spacing_mm)
    return f"{'x'.join(str(n) for n in volume.shape)} at {spacing} mm"


def read_single_volume(path: Path, fmt: str) -> Volume:
    """Read one NIfTI/MGZ/NRRD (or single DICOM) file whose format `fmt` detect_format already gave."""
    if fmt in ("nifti", "mgz"):
        return read_nifti(path, fmt)
    if fmt == "nrrd":
        return read_nrrd(path)
    if fmt == "dicom":
        return read_dicom_series([FileSource(path, "the file")])
    raise UnsupportedFormat(f"a {fmt} file cannot be read here. Accepted formats: {ACCEPTED_FORMATS}.")
