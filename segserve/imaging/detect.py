"""Recognise an uploaded file by its content (magic bytes); the file name is only a hint.

`sniff_bytes` works on the first bytes of a file (or of a zip member) so that the zip reader can classify
members without extracting them; `detect_format` is the file-based entry point.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from segserve.imaging.errors import CorruptImage, UnsupportedFormat

#: How many leading bytes `detect_format` reads. Enough for a DICOM preamble + the first elements, a NIfTI-2
#: header, and a compressed header block that inflates to a NIfTI / MGH header.
HEAD_BYTES = 64 * 1024

#: Formats `detect_format` returns.
FORMATS = ("nifti", "mgz", "nrrd", "dicom", "zip")

ACCEPTED_FORMATS = (
    "NIfTI (.nii, .nii.gz), MGZ/MGH (.mgz, .mgh), NRRD (.nrrd), "
    "DICOM (the .dcm files of one series, or a .zip holding one series)"
)

# DICOM value representations, to recognise an explicit-VR data set that lacks the preamble.
_DICOM_VRS = frozenset(
    (
        b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH "
        b"SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
    ).split()
)
_DICOM_NAME_HINTS = (".dcm", ".dicom", ".ima")

_MAGIC_DESCRIPTIONS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy array file (.npy)"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a Microsoft Office document"),
)


def detect_format(path: Path) -> str:
    """Return the format of the file at `path`: "nifti", "mgz", "nrrd", "dicom" or "zip".

    The decision is made on the content (magic bytes); the file name only settles ambiguous cases (a DICOM
    data set without preamble). Raises UnsupportedFormat, whose message says what the file looks like when
    that is recognisable ("a PNG image", "an empty file", ...) and lists the accepted formats; CorruptImage
    when a gzip stream cannot even be opened.
    """
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    return sniff_bytes(head, name_hint=path.name)


def sniff_bytes(head: bytes, *, name_hint: str = "") -> str:
    """Classify a file from its first bytes (up to HEAD_BYTES of them); see `detect_format`."""
    if not head:
        raise _unsupported("an empty file", name_hint)
    if head.startswith(b"\x1f\x8b"):
        return _sniff_gzip(head, name_hint)
    fmt = _sniff_plain(head)
    if fmt is not None:
        return fmt
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if _looks_like_bare_dicom(head, name_hint):
        return "dicom"
    raise _unsupported(describe_bytes(head), name_hint)


def describe_bytes(head: bytes) -> str:
    """A short phrase naming what an unsupported file looks like ("a PNG image", "a text file", ...)."""
    if not head:
        return "an empty file"
    for magic, what in _MAGIC_DESCRIPTIONS:
        if head.startswith(magic):
            return what
    if head.startswith(b"\x1f\x8b"):
        inner = _gunzip_head(head)
        if inner is not None and len(inner) > 262 and inner[257:262] == b"ustar":
            return "a gzip-compressed tar archive"
        return "a gzip-compressed file that holds no NIfTI or MGH volume"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive"
    if head.startswith(b"BM") and len(head) >= 26:
        return "a BMP image"
    if _is_text(head):
        return "a text file"
    return "a binary file of an unknown kind"


def _unsupported(what: str, name_hint: str) -> UnsupportedFormat:
    # The file name is client data: only its extension is echoed.
    suffix = "".join(Path(name_hint).suffixes[-2:]).lower() if name_hint else ""
    named = f" (although its name ends in {suffix})" if suffix and len(suffix) <= 12 else ""
    return UnsupportedFormat(
        f"Unsupported file: it looks like {what}{named}. Accepted formats: {ACCEPTED_FORMATS}."
    )


def _sniff_plain(head: bytes) -> str | None:
    """Formats recognisable from uncompressed leading bytes, or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    nifti = _nifti_kind(head)
    if nifti == "nifti":
        return "nifti"
    if nifti is not None:
        raise UnsupportedFormat(
            f"Unsupported file: it looks like {nifti}. Send a single-file NIfTI (.nii or .nii.gz) instead. "
            f"Accepted formats: {ACCEPTED_FORMATS}."
        )
    if _is_mgh_header(head):
        return "mgz"
    return None


def _sniff_gzip(head: bytes, name_hint: str) -> str:
    inner = _gunzip_head(head)
    if inner is None:
        raise CorruptImage("the file is a damaged gzip stream: its first block cannot be decompressed")
    nifti = _nifti_kind(inner)
    if nifti == "nifti":
        return "nifti"
    if nifti is not None:
        raise UnsupportedFormat(
            f"Unsupported file: it looks like a compressed {nifti.removeprefix('a ').removeprefix('an ')}. "
            f"Accepted formats: {ACCEPTED_FORMATS}."
        )
    if _is_mgh_header(inner):
        return "mgz"
    if not inner and name_hint.lower().endswith((".nii.gz", ".mgz")):
        # A gzip stream cut before its first block is complete: report it as the truncated file it is.
        return "mgz" if name_hint.lower().endswith(".mgz") else "nifti"
    raise _unsupported(describe_bytes(head), name_hint)


def _gunzip_head(head: bytes, n: int = 1024) -> bytes | None:
    """Inflate up to `n` bytes from the start of a gzip stream; None when the stream is damaged."""
    try:
        return zlib.decompressobj(wbits=31).decompress(head, n)
    except zlib.error:
        return None


def _nifti_kind(head: bytes) -> str | None:
    """ "nifti" for a single-file NIfTI-1/2, a phrase for the header-only variants we refuse, else None."""
    if len(head) >= 348:
        for order in ("<", ">"):
            (size,) = struct.unpack(order + "i", head[:4])
            if size == 348:
                magic = head[344:348]
                if magic == b"n+1\x00":
                    return "nifti"
                if magic == b"ni1\x00":
                    return "a NIfTI header without its data (a .hdr/.img pair)"
                return "an ANALYZE 7.5 header (.hdr/.img pair)"
    if len(head) >= 540:
        for order in ("<", ">"):
            (size,) = struct.unpack(order + "i", head[:4])
            if size == 540:
                magic = head[4:8]
                if magic == b"n+2\x00":
                    return "nifti"
                if magic == b"ni2\x00":
                    return "a NIfTI-2 header without its data (a .hdr/.img pair)"
    return None


def _is_mgh_header(head: bytes) -> bool:
    """FreeSurfer MGH: big-endian int32 version 1, four positive dims, a known data type code."""
    if len(head) < 28:
        return False
    version, width, height, depth, frames, dtype_code = struct.unpack(">6i", head[:24])
    dims_ok = all(0 < d < 1_000_000 for d in (width, height, depth, frames))
    return version == 1 and dims_ok and dtype_code in (0, 1, 3, 4)


def _looks_like_bare_dicom(head: bytes, name_hint: str) -> bool:
    """A DICOM data set written without the 128-byte preamble and "DICM" (old ACR-NEMA style files)."""
    if head.startswith(b"DICM"):
        return True
    if len(head) >= 8:
        group, element = struct.unpack("<HH", head[:4])
        if group in (0x0002, 0x0008) and element < 0x0100:
            if head[4:6] in _DICOM_VRS:
                return True
            (length,) = struct.unpack("<I", head[4:8])
            if group == 0x0008 and length < 1024:
                return True
    if name_hint.lower().endswith(_DICOM_NAME_HINTS):
        return _pydicom_can_parse(head)
    return False


def _pydicom_can_parse(head: bytes) -> bool:
    """Last resort for a file named like DICOM: does pydicom find real DICOM attributes in it?"""
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(head), force=True, stop_before_pixels=True)
    except Exception:
        return False
    return any(keyword in ds for keyword in ("SOPClassUID", "Modality", "Rows", "SeriesInstanceUID"))


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    sample = head[:8192]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:
            return False
        text = sample[: exc.start].decode("utf-8")
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
    return printable / len(text) > 0.95
