"""De-identification of POST /v1/jobs uploads (SEGSERVE_DEIDENTIFY=true), before they are validated and
stored: every DICOM file of the `image`, `image.<channel>` and `reference` fields is rewritten de-identified
(segserve.dicom.deid).

A .zip holding DICOM is unpacked: its DICOM members become de-identified files of their own (`0000.dcm`, ...;
the job then lists those files instead of the zip), and its other members are dropped (DICOMDIRs too: their
records repeat patient names and IDs). A zip without DICOM members (a NIfTI inside) and non-DICOM files are
kept as they are. The UID pairs are stored (table deid_uids) so results can be tied back. Nothing of the
original is kept: a file that cannot be de-identified is refused (422), never stored as it came.
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from segserve.config import Settings
from segserve.db import new_session
from segserve.dicom.deid import DeidentificationError
from segserve.dicom.deid_store import DeidOutcome, deidentify_file, save_uid_pairs, uid_key
from segserve.imaging.detect import HEAD_BYTES, detect_format, sniff_bytes
from segserve.imaging.errors import ArchiveTooLarge, CorruptImage, ImageError, UnsupportedFormat
from segserve.scans.archive import MAX_ZIP_ENTRIES, MAX_ZIP_TOTAL_BYTES
from service.uploads import ParsedUpload

_DICOMDIR_NAMES = {"dicomdir"}


def deidentify_upload(settings: Settings, staging: Path, form: ParsedUpload) -> ParsedUpload:
    """Rewrite the DICOM files of `form` (stored under `staging/<field>/`) de-identified; returns `form`
    with the new file lists. Raises ImageError (-> 422/413) for a file that cannot be de-identified."""
    key = uid_key(settings.resolved_data_dir)
    outcomes: list[DeidOutcome] = []
    for field in list(form.files):  # "image", "reference" and the "image/<channel>" folders
        names = form.files[field]
        if not names:
            continue
        source, target = staging / field, staging / f"{field}.deid"
        target.mkdir()
        kept: list[str] = []
        for n, name in enumerate(names, start=1):
            label = f"{field} file {n} of {len(names)}"
            _rewrite(source / name, target, kept, key, outcomes, label)
        shutil.rmtree(source)
        target.rename(source)
        form.files[field] = kept
    if outcomes:
        with new_session(settings.resolved_database_url) as session:
            save_uid_pairs(session, outcomes)
    return form


def _rewrite(
    path: Path, target: Path, kept: list[str], key: bytes, outcomes: list[DeidOutcome], label: str
) -> None:
    try:
        fmt = detect_format(path)
    except (UnsupportedFormat, CorruptImage):
        fmt = "unknown"  # left for validation to refuse with its own message
    if fmt == "dicom":
        outcomes.append(_deid_one(path, target, kept, key, label))
    elif fmt == "zip" and _unpack_dicom(path, target, kept, key, outcomes, label):
        return
    else:
        name = f"{len(kept):04d}{_suffix(path.name)}"
        path.rename(target / name)
        kept.append(name)


def _deid_one(src: Path, target: Path, kept: list[str], key: bytes, label: str) -> DeidOutcome:
    name = f"{len(kept):04d}.dcm"
    try:
        outcome = deidentify_file(src, target / name, key)
    except DeidentificationError as exc:
        raise ImageError(
            f"{label} could not be de-identified: {exc}", code="deidentification_failed"
        ) from None
    kept.append(name)
    return outcome


def _unpack_dicom(
    path: Path, target: Path, kept: list[str], key: bytes, outcomes: list[DeidOutcome], label: str
) -> bool:
    """Unpack the DICOM members of the zip at `path` de-identified; False (nothing done) if it has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            if len(infos) > MAX_ZIP_ENTRIES or sum(i.file_size for i in infos) > MAX_ZIP_TOTAL_BYTES:
                raise ArchiveTooLarge(f"{label}: the zip archive is too large to de-identify")
            dicom = [i for i in infos if _is_dicom_member(archive, i)]
            if not dicom:
                return False
            scratch = target / ".member"
            for info in dicom:
                with archive.open(info) as src, open(scratch, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1024 * 1024)
                outcomes.append(_deid_one(scratch, target, kept, key, f"{label}, zip entry"))
            scratch.unlink(missing_ok=True)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise CorruptImage(f"{label}: the zip archive cannot be read ({type(exc).__name__})") from None
    path.unlink()
    return True


def _is_dicom_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    name = PurePosixPath(info.filename.replace("\\", "/")).name
    if info.flag_bits & 0x1:
        raise ImageError("the zip archive is encrypted; send an unencrypted archive", code="encrypted_zip")
    if name.lower() in _DICOMDIR_NAMES:
        return False  # dropped: its records repeat patient names and IDs
    with archive.open(info) as fh:
        head = fh.read(HEAD_BYTES)
    try:
        return sniff_bytes(head, name_hint=name) == "dicom"
    except (UnsupportedFormat, CorruptImage):
        return False


def _suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".zip"):
        if lowered.endswith(suffix):
            return suffix
    return ""
