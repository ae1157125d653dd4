"""Reading a .zip upload: one DICOM series (possibly in sub-folders), or a single NIfTI/MGZ/NRRD volume.

Nothing is extracted under a member's own name: DICOM members are read one at a time into memory, and a single
volume member is copied to a temporary file with a fixed name, so a hostile member name ("../../etc/x",
absolute paths) can never write outside the temporary directory (no zip-slip). The declared sizes are capped
before anything is decompressed (zip bombs), and zipfile itself stops a member at its declared size and checks
its CRC.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from segserve.dicom.series import read_dicom_series
from segserve.imaging.detect import HEAD_BYTES, describe_bytes, sniff_bytes
from segserve.imaging.errors import (
    ArchiveTooLarge,
    CorruptImage,
    ImageError,
    InvalidSeries,
    UnsupportedFormat,
)
from segserve.imaging.volume import Volume

#: Cap on the total uncompressed size of all members (bytes).
MAX_ZIP_TOTAL_BYTES = 4 * 1024**3
#: Cap on the number of entries (files and folders) in the archive.
MAX_ZIP_ENTRIES = 20_000

_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_VOLUME_FORMATS = ("nifti", "mgz", "nrrd")


@dataclass(frozen=True)
class ZipMemberSource:
    """A zip member as a DICOM source: read into memory when opened."""

    archive: zipfile.ZipFile
    info: zipfile.ZipInfo
    label: str

    def open(self) -> AbstractContextManager[IO[bytes]]:
        try:
            data = self.archive.read(self.info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise CorruptImage(f"the zip archive is damaged: {self.label} cannot be decompressed") from exc
        return io.BytesIO(data)


def read_zip(
    path: Path,
    read_volume: Callable[[Path, str], Volume],
    *,
    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES,
    max_entries: int = MAX_ZIP_ENTRIES,
) -> Volume:
    """Read the one DICOM series, or the one volume file, held in the zip archive at `path`.

    `read_volume(path, format)` reads a single NIfTI/MGZ/NRRD file (the readers module passes its own). Raises
    CorruptImage for a damaged archive, ArchiveTooLarge past the caps, InvalidSeries when the archive holds
    several series or volumes, UnsupportedFormat when it holds nothing we read.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise CorruptImage("the zip archive is damaged or truncated and cannot be opened") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > max_entries:
            raise ArchiveTooLarge(
                f"the zip archive has {len(infos):,} entries; at most {max_entries:,} are accepted"
            )
        total = sum(info.file_size for info in infos)
        if total > max_total_bytes:
            raise ArchiveTooLarge(
                f"the zip archive unpacks to {total / 1024**3:.2f} GiB; at most "
                f"{max_total_bytes / 1024**3:.2f} GiB are accepted"
            )
        dicom: list[ZipMemberSource] = []
        volumes: list[tuple[zipfile.ZipInfo, str]] = []
        others: Counter[str] = Counter()
        members = [info for info in infos if not info.is_dir() and not _is_junk(info.filename)]
        for n, info in enumerate(members, start=1):
            label = f"zip entry {n} of {len(members)}"
            if info.flag_bits & 0x1:
                raise ImageError(
                    "the zip archive is encrypted; send an unencrypted archive", code="encrypted_zip"
                )
            kind = _classify(archive, info, label)
            if kind == "dicom":
                dicom.append(ZipMemberSource(archive=archive, info=info, label=label))
            elif kind in _VOLUME_FORMATS:
                volumes.append((info, kind))
            else:
                others[kind] += 1

        if dicom and volumes:
            raise InvalidSeries(
                f"the zip archive holds both DICOM files ({len(dicom)}) and {len(volumes)} volume file(s); "
                "send either one DICOM series or one volume"
            )
        if dicom:
            return read_dicom_series(dicom)
        if len(volumes) > 1:
            raise InvalidSeries(
                f"the zip archive holds {len(volumes)} volume files; send one volume per upload",
                code="multiple_volumes",
            )
        if volumes:
            info, fmt = volumes[0]
            return _read_volume_member(archive, info, fmt, read_volume)
        found = ", ".join(f"{n} x {kind}" for kind, n in others.most_common()) or "no files"
        raise UnsupportedFormat(
            f"the zip archive holds no DICOM series and no NIfTI/MGZ/NRRD volume (found: {found})"
        )


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts:
        return True
    return parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1].lower() in _JUNK_NAMES


def _classify(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> str:
    """The member's format ("dicom", "nifti", ...) or, for anything else, a phrase naming what it is."""
    try:
        with archive.open(info) as fh:
            head = fh.read(HEAD_BYTES)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise CorruptImage(f"the zip archive is damaged: {label} cannot be decompressed") from exc
    except NotImplementedError as exc:
        raise ImageError(
            f"the zip archive uses a compression method we cannot read ({label}); use plain deflate",
            code="unsupported_zip",
        ) from exc
    try:
        kind = sniff_bytes(head, name_hint=PurePosixPath(info.filename).name)
    except (UnsupportedFormat, CorruptImage):
        return describe_bytes(head)
    return "a zip archive inside the zip" if kind == "zip" else kind


def _read_volume_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, fmt: str, read_volume: Callable[[Path, str], Volume]
) -> Volume:
    with tempfile.TemporaryDirectory(prefix="segserve-zip-") as tmp:
        target = Path(tmp) / "volume"  # fixed name: the member's name is never used as a path
        try:
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1024 * 1024)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise CorruptImage("the zip archive is damaged: its volume file cannot be decompressed") from exc
        return read_volume(target, fmt)
