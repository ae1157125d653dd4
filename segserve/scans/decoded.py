"""The decoded form of a job's input: what the API read while validating an upload, kept beside it so that
the worker maps those voxels instead of decoding the upload (gzip, DICOM pixel data, ...) a second time.

Layout, under a job's ``input/`` folder (the staging folder while the API validates; it is renamed into the
job's folder with the upload, so a job has either all of it or none):

    decoded/<name>.json   how to map the voxels, and the volume's geometry (see below)
    decoded/<name>.npy    the voxels, when the upload does not already hold them raw

``<name>`` is "image" for a one-image job, "channel.<channel>" for each channel of a multi-channel job, and
"reference" for a reference label volume (its voxels as `read_labels` returned them: uint8 / uint16).

The JSON holds: ``file`` (relative to ``input/``), ``offset`` (bytes), ``dtype`` (numpy, with byte order),
``shape`` (I, J, K), ``order`` ("C" or "F"), ``affine`` (4 x 4 voxel -> RAS+ mm), ``source_format``,
``meta`` (the reader's loggable facts) and, for NIfTI input, the NIfTI header's 348 / 540 bytes (base64; its
extensions are left out, as every writer drops them). When the reader returned a memory map of an
uncompressed upload (an uncompressed NIfTI: nibabel maps it), ``file`` names the upload itself and nothing is
copied: the API then never touches those pages, so its memory stays flat for a big raw upload.

A job without this folder (made before it existed, or by a path that does not write it) is read from the
upload as before (`load_decoded` answers None).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np

from segserve.imaging.volume import Volume

__all__ = ["DECODED_DIR", "channel_name", "decoded_bytes", "load_decoded", "save_decoded"]

DECODED_DIR = "decoded"
_FORMAT = 1


def channel_name(channel: str) -> str:
    """The decoded name of one input channel of a multi-channel job."""
    return f"channel.{channel}"


def decoded_bytes(volume: Volume, input_dir: Path) -> int:
    """The bytes `save_decoded` will write for `volume`: 0 when its voxels are a map of the upload."""
    return 0 if _mapped_upload(volume.array, input_dir) is not None else int(volume.array.nbytes)


def save_decoded(volume: Volume, input_dir: Path, name: str) -> None:
    """Keep `volume` (as a reader returned it) under ``input_dir/decoded/<name>.*`` for `load_decoded`.

    Each file is written to a temporary name and renamed into place, the JSON last: a reader finds either
    the whole decoded form or none of it.
    """
    folder = input_dir / DECODED_DIR
    folder.mkdir(exist_ok=True)
    array = volume.array
    if array.ndim != 3:
        raise ValueError(f"a decoded volume is 3D, got shape {array.shape}")
    order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    mapped = _mapped_upload(array, input_dir)
    if mapped is not None:
        file, offset = mapped
    else:
        file = f"{DECODED_DIR}/{name}.npy"
        # np.save writes F- or C-ordered data as it lies, no copy
        _write_atomic(folder / f"{name}.npy", lambda fh: np.save(fh, array, allow_pickle=False))
        offset = -1  # an .npy file: np.load reads its own header
    record: dict[str, Any] = {
        "format": _FORMAT,
        "file": file,
        "offset": offset,
        "dtype": array.dtype.str,
        "shape": [int(n) for n in array.shape],
        "order": order,
        "affine": np.asarray(volume.affine, dtype=np.float64).tolist(),
        "source_format": volume.source_format,
        "meta": _jsonable(volume.meta),
        "nifti_header": _header_record(volume.header),
    }
    _write_atomic(folder / f"{name}.json", lambda fh: fh.write(json.dumps(record).encode("utf-8")))


def load_decoded(input_dir: Path, name: str) -> Volume | None:
    """The volume `save_decoded` kept under ``input_dir``, its voxels memory-mapped copy-on-write (the
    file is never changed; pages are read as they are touched); None when there is no decoded form."""
    path = input_dir / DECODED_DIR / f"{name}.json"
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    if record.get("format") != _FORMAT:
        return None
    data = input_dir / str(record["file"])
    shape = tuple(int(n) for n in record["shape"])
    if int(record["offset"]) < 0:
        array = np.load(data, mmap_mode="c", allow_pickle=False)
    else:
        array = np.memmap(
            data,
            dtype=np.dtype(record["dtype"]),
            mode="c",
            offset=int(record["offset"]),
            shape=shape,
            order=record["order"],
        )
    if array.shape != shape or array.dtype != np.dtype(record["dtype"]):
        raise ValueError(f"{data.name}: holds {array.dtype} {array.shape}, its record says otherwise")
    return Volume(
        array=array,
        affine=np.asarray(record["affine"], dtype=np.float64),
        source_format=str(record["source_format"]),
        meta=dict(record["meta"]),
        header=_header_from(record["nifti_header"]),
    )


def _mapped_upload(array: np.ndarray, input_dir: Path) -> tuple[str, int] | None:
    """(file relative to `input_dir`, byte offset) when `array` is exactly a memory map of a file under
    `input_dir` (its whole mapped extent, in native byte order), else None."""
    if not isinstance(array, np.memmap) or array.filename is None or not array.dtype.isnative:
        return None
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        return None
    base: Any = array
    while isinstance(base, np.ndarray) and base.base is not None:  # the view np.memmap made of its mmap
        base = base.base
    import mmap

    if not isinstance(base, mmap.mmap):
        return None
    start = np.frombuffer(base, dtype=np.uint8).ctypes.data  # where the mapping begins
    offset = int(array.offset)
    if array.ctypes.data - start != offset % mmap.ALLOCATIONGRANULARITY:
        return None  # a view that starts elsewhere in the mapping
    try:
        relative = Path(array.filename).resolve().relative_to(input_dir.resolve())
    except ValueError:
        return None
    return relative.as_posix(), offset


def _write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write(fh)`` into a temporary file beside `path`, then renamed onto it: readers see the whole
    file or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _header_record(header: Any) -> dict[str, str] | None:
    if not isinstance(header, nib.Nifti1Header):  # includes Nifti2Header
        return None
    return {
        "version": "2" if isinstance(header, nib.Nifti2Header) else "1",
        "endianness": str(header.endianness),
        "bytes": base64.b64encode(header.binaryblock).decode("ascii"),
    }


def _header_from(record: dict[str, str] | None) -> Any:
    if record is None:
        return None
    klass: Any = nib.Nifti2Header if record["version"] == "2" else nib.Nifti1Header
    return klass(binaryblock=base64.b64decode(record["bytes"]), endianness=record["endianness"], check=False)


def _jsonable(value: Any) -> Any:
    """`value` with numpy scalars and arrays as plain numbers and lists, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
