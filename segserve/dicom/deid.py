"""De-identification of DICOM objects following DICOM PS3.15 Annex E, the Basic Application Level
Confidentiality Profile (the attribute table is `segserve.dicom.deid_table`).

What `deidentify(ds, uids)` does to a data set, in place, recursively into every sequence item:

- every attribute of Table E.1-1 present is removed (X), emptied (Z), given a dummy value of its VR (D), or,
  for UIDs (U), replaced through `uids`, a `UidMapper`: a keyed hash of (original Study Instance UID,
  original UID), so the same UID maps to the same replacement in every object of a study, in every process,
  without coordination; the caller keeps the pairs (`UidMapper.pairs`) so results can be tied back;
- all private attributes, and curve (50xx) and overlay (60xx) groups, are removed;
- the file meta's Media Storage SOP Instance UID follows the new SOP Instance UID, and the sending
  application's AE titles in the file meta are removed;
- Patient Identity Removed = YES, De-identification Method, De-identification Method Code Sequence
  (113100 DCM "Basic Application Confidentiality Profile") and Longitudinal Temporal Information
  Modified = REMOVED are set.

Pixel data is not examined: an object that declares Burned In Annotation = YES is refused
(`DeidentificationError`), since the profile does not allow passing it on unless its pixels are cleaned.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from segserve.dicom.deid_table import BASIC_PROFILE, Action, resolve

METHOD = "segserve PS3.15 E.1 Basic Profile"
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

# Tag -> action, built once from the table (keywords are checked by the tests).
_ACTIONS: dict[int, Action] = {
    int(tag): resolve(code)
    for keyword, code in BASIC_PROFILE.items()
    if (tag := tag_for_keyword(keyword)) is not None
}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, object] = {
    "PN": _DUMMY_TEXT,
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
}
_FILE_META_AE_TITLES = (0x00020016, 0x00020017, 0x00020018)


class DeidentificationError(ValueError):
    """The object cannot be de-identified by this profile (the message names why, without patient data)."""


class UidMapper:
    """Replaces UIDs consistently within one study: `mapper(uid)` -> "2.25.<128-bit integer>".

    The integer is an HMAC-SHA256 (truncated to 128 bits) of (original Study Instance UID, uid) under a
    secret key, so nobody without the key can confirm a guessed original, and two processes given the same
    key and study always agree. `pairs` collects replacement -> original for the caller to store.
    """

    def __init__(self, key: bytes, study_uid: str) -> None:
        if len(key) < 16:
            raise ValueError(f"the UID key must be at least 16 bytes, got {len(key)}")
        self._key = key
        self.study_uid = study_uid
        self.pairs: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip()
        if not uid:
            return uid
        digest = hmac.new(self._key, f"{self.study_uid}\0{uid}".encode(), hashlib.sha256).digest()
        replacement = f"2.25.{int.from_bytes(digest[:16], 'big')}"
        self.pairs[replacement] = uid
        return replacement


def deidentify(ds: Dataset, uids: Callable[[str], str]) -> Dataset:
    """De-identify `ds` in place (see the module docstring) and return it. Raises DeidentificationError."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise DeidentificationError(
            "the image declares burned-in annotation (text in the pixels), which de-identification "
            "cannot remove"
        )
    ds.remove_private_tags()
    _clean(ds, uids)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for tag in _FILE_META_AE_TITLES:
            if tag in meta:
                del meta[tag]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return ds


def _clean(ds: Dataset, uids: Callable[[str], str]) -> None:
    for tag in list(ds.keys()):
        group = tag.group
        if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del ds[tag]  # curves and overlays: their comments and bitmaps may carry text
            continue
        if tag.element == 0:
            del ds[tag]  # group lengths (retired) would be stale after the changes below
            continue
        elem = ds[tag]
        action = _ACTIONS.get(int(BaseTag(tag)))
        if action is None or action == "K":
            if elem.VR == "SQ":
                for item in elem.value or []:
                    _clean(item, uids)
            continue
        _apply(ds, elem, action, uids)


def _apply(ds: Dataset, elem: DataElement, action: Action, uids: Callable[[str], str]) -> None:
    if action == "X":
        del ds[elem.tag]
    elif action == "Z":
        elem.value = empty_value_for_VR(elem.VR)
    elif action == "D":
        elem.value = _dummy(elem.VR)
    elif action == "U":
        value = elem.value
        if isinstance(value, MultiValue | list):
            elem.value = [uids(str(v)) for v in value]
        elif value not in (None, ""):
            elem.value = uids(str(value))


def _dummy(vr: str) -> object:
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"):
        return _DUMMY_TEXT
    # sequences, binary and numeric values: an empty value is the only dummy that cannot mislead
    return empty_value_for_VR(vr)
