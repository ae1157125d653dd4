"""De-identifying DICOM files on disk, and keeping what ties the results back to the source.

- `uid_key(data_dir)`: the secret key of the UID mapping (`<data_dir>/deid/uid.key`, 32 random bytes,
  created once by whichever process needs it first; the API and the workers share the data directory).
- `deidentify_file(src, dst, key)`: read a DICOM file, de-identify it (segserve.dicom.deid), write it
  to `dst`.
- `save_uid_pairs(session, outcome)`: store replacement -> original UIDs (table `deid_uids`), so a job's
  results (whose UIDs are the replacements) can be tied back to the source study. The originals are
  patient data of a kind: only the database holds them, never a log line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import Insert, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from segserve.db import DeidUid
from segserve.dicom.deid import DeidentificationError, UidMapper, deidentify

KEY_BYTES = 32


@dataclass
class DeidOutcome:
    """The original identity of one de-identified object (UIDs only) and the UID pairs its mapping made."""

    original_study_uid: str
    original_series_uid: str
    original_sop_instance_uid: str
    pairs: dict[str, str] = field(default_factory=dict)  # replacement -> original


def uid_key(data_dir: Path) -> bytes:
    """The UID mapping key, created on first use. Safe when several processes race to create it: the key
    is written to a private temporary file and linked into place, so readers never see a partial key."""
    path = data_dir / "deid" / "uid.key"
    if path.exists():
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".uid.key.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise RuntimeError(f"the de-identification key {path} is damaged ({len(key)} bytes)")
    return key


def deidentify_file(src: Path, dst: Path, key: bytes) -> DeidOutcome:
    """De-identify the DICOM file `src` into `dst` (a PS3.10 file). Raises DeidentificationError when the
    file is not readable DICOM or cannot be de-identified; `dst` is then not written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings quote attribute values: keep them out of logs
        try:
            try:
                ds = pydicom.dcmread(src)
            except InvalidDicomError:
                ds = pydicom.dcmread(src, force=True)  # the readers accept files without the preamble too
            ds.decode()  # value conversion errors surface here, not half-way through the profile
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DeidentificationError(f"not a readable DICOM file ({type(e).__name__})") from None
        if "SOPInstanceUID" not in ds and "Rows" not in ds and "Modality" not in ds:
            raise DeidentificationError("not a readable DICOM file")
        outcome = DeidOutcome(
            original_study_uid=str(ds.get("StudyInstanceUID", "")),
            original_series_uid=str(ds.get("SeriesInstanceUID", "")),
            original_sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        )
        mapper = UidMapper(key, outcome.original_study_uid)
        deidentify(ds, mapper)
        _ensure_transfer_syntax(ds)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        try:
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, dst)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise DeidentificationError(
                f"the de-identified object could not be written ({type(exc).__name__})"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
    outcome.pairs = mapper.pairs
    return outcome


def _ensure_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A file read without its meta header gets the transfer syntax it was read with."""
    meta = ds.file_meta
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def save_uid_pairs(session: Session, outcomes: list[DeidOutcome]) -> None:
    """Store every replacement -> original UID pair of `outcomes`; pairs already stored are skipped.
    Commits."""
    rows = {
        replacement: {
            "replacement": replacement,
            "original": original,
            "original_study_uid": o.original_study_uid,
        }
        for o in outcomes
        for replacement, original in o.pairs.items()
    }
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    values = list(rows.values())
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        statement: Insert
        if dialect == "postgresql":
            statement = postgresql.insert(DeidUid).values(chunk).on_conflict_do_nothing()
        elif dialect == "sqlite":
            statement = sqlite.insert(DeidUid).values(chunk).on_conflict_do_nothing()
        else:  # no upsert: the mapping is deterministic, so a duplicate means the same pair
            statement = insert(DeidUid).values(chunk)
        session.execute(statement)
    session.commit()


__all__ = ["DeidOutcome", "DeidentificationError", "deidentify_file", "save_uid_pairs", "uid_key"]
