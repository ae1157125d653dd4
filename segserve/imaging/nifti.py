"""NIfTI-1/2 (.nii, .nii.gz) and FreeSurfer MGH/MGZ (.mgh, .mgz) reading with nibabel.

The file is opened by content (gzip or not), not by its name, so an upload stored under any name reads.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from io import IOBase
from pathlib import Path
from typing import IO, Any, cast

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.fileholders import FileHolder
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from segserve.imaging._common import check_voxel_count, native_byte_order, spatial_shape
from segserve.imaging.errors import CorruptImage, ImageError
from segserve.imaging.volume import Volume

log = logging.getLogger(__name__)


def read_nifti(path: Path, source_format: str) -> Volume:
    """Read a NIfTI ("nifti") or MGH/MGZ ("mgz") file into a Volume.

    Returns a Volume with array shape (I, J, K) as stored (a singleton 4th dimension is squeezed),
    affine = the image's RAS+ affine in mm (nibabel's `img.affine`: sform, else qform, else pixdim-based),
    `header` = a copy of the NIfTI header for NIfTI input (None for MGH/MGZ). Voxel values are the stored
    ones, scaled by scl_slope/scl_inter into float32 only when those are set. Raises CorruptImage for a
    truncated or damaged file, NotVolumetric for 2D or 4D data.
    """
    if source_format not in ("nifti", "mgz"):
        raise ValueError(f"read_nifti reads nifti or mgz, not {source_format!r}")
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        fh: IO[bytes] = cast(IO[bytes], _ChunkedGzipFile(fileobj=raw, mode="rb")) if compressed else raw
        try:
            img = _load(fh, source_format)
            shape = spatial_shape(tuple(int(d) for d in img.shape))
            check_voxel_count(tuple(int(d) for d in img.shape))
            array = _load_data(img)
        finally:
            if fh is not raw:
                fh.close()

    if array.ndim > 3:  # (I, J, K, 1, ...): drop the singleton trailing dimensions
        array = array.reshape(shape)
    array = native_byte_order(array)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorruptImage("the file's affine (voxel-to-world matrix) is degenerate or not finite")

    header: Any = None
    meta: dict[str, Any] = {
        "dtype": str(array.dtype),
        "stored_dtype": str(np.dtype(img.get_data_dtype()).newbyteorder("=")),
        "shape": list(shape),
        "spacing_mm": [float(x) for x in np.linalg.norm(affine[:3, :3], axis=0)],
        "orientation": "".join(nib.aff2axcodes(affine)),
    }
    if source_format == "nifti":
        header = img.header.copy()
        meta["nifti_version"] = 2 if isinstance(img, nib.Nifti2Image) else 1
        meta["sform_code"] = int(header["sform_code"])
        meta["qform_code"] = int(header["qform_code"])
    return Volume(array=array, affine=affine, source_format=source_format, meta=meta, header=header)


#: Decompressed bytes per read into the voxel buffer.
_READ_CHUNK = 4 << 20


class _ChunkedGzipFile(gzip.GzipFile):
    """A GzipFile whose ``readinto`` fills the buffer piece by piece.

    nibabel reads a compressed volume with one ``readinto`` of a buffer of the volume's size, and
    GzipFile's (io's default) first decompresses all of it into a ``bytes`` object of that size, then
    copies: 2 x the volume at the peak. In pieces the peak is the volume plus one piece; same bytes.
    """

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        total = 0
        while total < len(view):
            data = self.read(min(_READ_CHUNK, len(view) - total))
            if not data:
                break
            view[total : total + len(data)] = data
            total += len(data)
        return total


def _load(fh: IO[bytes], source_format: str) -> Any:
    """Parse the header from an open (decompressed) stream; the data stays unread in `img.dataobj`."""
    try:
        if source_format == "mgz":
            return nib.MGHImage.from_file_map({"image": FileHolder(fileobj=cast(IOBase, fh))})
        head = fh.read(4)
        fh.seek(0)
        if len(head) < 4:
            raise CorruptImage("the file is truncated: it ends inside the NIfTI header")
        sizes = {struct.unpack("<i", head)[0], struct.unpack(">i", head)[0]}
        image_class: Any = nib.Nifti2Image if 540 in sizes else nib.Nifti1Image
        holder = FileHolder(fileobj=cast(IOBase, fh))
        return image_class.from_file_map({"image": holder, "header": holder})
    except (EOFError, zlib.error, OSError) as exc:
        raise CorruptImage("the file is truncated or damaged: its header cannot be read") from exc
    except (WrapStructError, HeaderDataError, ImageFileError, ValueError, struct.error) as exc:
        raise CorruptImage(f"the file's header is truncated or invalid ({exc})") from exc


def _load_data(img: Any) -> np.ndarray:
    """Read all voxel data now, so that a short or damaged file fails here with CorruptImage."""
    proxy = img.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled())
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise CorruptImage(
            "the file is truncated: the compressed stream ends before all voxel data was read"
        ) from exc
    except OSError as exc:  # nibabel: "Expected N bytes, got M bytes ... could the file be damaged?"
        raise CorruptImage(
            "the file is truncated: it holds fewer voxel bytes than its header declares"
        ) from exc
    except (ValueError, MemoryError) as exc:
        raise ImageError(f"the voxel data cannot be read ({type(exc).__name__})") from exc
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if slope == 1.0 and inter == 0.0:
        return raw
    log.debug("applying intensity scaling slope=%g inter=%g", slope, inter)
    scaled = raw.astype(np.float32)
    scaled *= np.float32(slope)
    scaled += np.float32(inter)
    return scaled
