"""De-identification (PS3.15 E.1 Basic Profile) of the real CT slices: what goes, what stays, UIDs replaced
consistently per study, the image unchanged, a SEG still buildable, and the UID pairs kept for tie-back."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import select

from segserve.db import DeidUid, init_db, new_session
from segserve.dicom.deid import DeidentificationError, UidMapper, deidentify
from segserve.dicom.deid_store import deidentify_file, save_uid_pairs, uid_key
from segserve.dicom.deid_table import BASIC_PROFILE, resolve
from segserve.dicom.seg import build_seg
from segserve.scans.readers import read_image
from segserve.scans.seg_export import read_dicom_volume_and_datasets
from tests.support.dicomweb import ct_series
from tests.support.paths import require_shared

KEY = b"k" * 32
SECRETS = ("DOE^JANE", "PID-STOW-4711", "19610203", "ACC-5511", "Dr^Who", "OTHER-ID-7")


def _identified() -> list[Dataset]:
    require_shared()
    series = ct_series(compress=False)
    for ds in series:
        ds.PatientBirthDate, ds.AccessionNumber, ds.ReferringPhysicianName = "19610203", "ACC-5511", "Dr^Who"
        other = Dataset()
        other.PatientID = "OTHER-ID-7"
        ds.OtherPatientIDsSequence = Sequence([other])
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = series[0].SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([ref])
        ds.add_new(0x60000022, "LO", "overlay note")  # Overlay Description: an overlay group
    return series


def _write(series: list[Dataset], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(series):
        ds.save_as(directory / f"{n}.dcm", enforce_file_format=True)
        paths.append(directory / f"{n}.dcm")
    return paths


def test_every_table_keyword_is_a_dicom_attribute_and_every_code_resolves() -> None:
    assert all(tag_for_keyword(k) is not None for k in BASIC_PROFILE)
    assert {resolve(c) for c in BASIC_PROFILE.values()} == {"X", "Z", "D", "U", "K"}
    assert [resolve(c) for c in ("X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*")] == ["Z", "D", "D", "D", "K"]
    with pytest.raises(ValueError, match="unknown"):
        resolve("Q")


def test_identifiers_go_uids_are_replaced_consistently_and_the_image_is_unchanged(tmp_path: Path) -> None:
    series = _identified()
    originals = _write(series, tmp_path / "in")
    outcomes = [deidentify_file(p, tmp_path / f"out{n}.dcm", KEY) for n, p in enumerate(originals)]
    out = [pydicom.dcmread(tmp_path / f"out{n}.dcm") for n in range(len(originals))]

    text = b"".join((tmp_path / f"out{n}.dcm").read_bytes() for n in range(len(originals)))
    for secret in SECRETS:
        assert secret.encode() not in text
    first, source = out[0], series[0]
    assert first.PatientName == "" and first.PatientID == "" and first.AccessionNumber == ""
    assert "OtherPatientIDsSequence" not in first and "InstanceCreationDate" not in first
    assert not any(e.tag.is_private for e in first) and 0x60000022 not in first
    assert first.PatientIdentityRemoved == "YES"
    assert first.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert first.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in first.file_meta
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
        assert first[keyword].value != source[keyword].value and first[keyword].value.startswith("2.25.")
    # consistent within the study: shared UIDs map alike, instance UIDs stay distinct, references follow
    assert len({ds.StudyInstanceUID for ds in out}) == 1 and len({ds.SeriesInstanceUID for ds in out}) == 1
    assert len({ds.FrameOfReferenceUID for ds in out}) == 1 and len({ds.SOPInstanceUID for ds in out}) == 3
    assert all(ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID for ds in out)
    assert first.SOPClassUID == source.SOPClassUID and first.Modality == "CT"  # not identifying: kept
    assert outcomes[0].pairs[first.StudyInstanceUID] == source.StudyInstanceUID
    assert outcomes[1].original_sop_instance_uid == series[1].SOPInstanceUID

    before = read_image(originals)
    after = read_image(sorted(tmp_path.glob("out*.dcm")))
    np.testing.assert_array_equal(after.array, before.array)
    np.testing.assert_allclose(after.affine, before.affine)


def test_replacements_depend_on_the_study_and_the_key() -> None:
    a, b, other_key = UidMapper(KEY, "1.2.3"), UidMapper(KEY, "1.2.4"), UidMapper(b"q" * 32, "1.2.3")
    assert a("1.2.3.9") == a("1.2.3.9") == UidMapper(KEY, "1.2.3")("1.2.3.9")
    assert a("1.2.3.9") != b("1.2.3.9") and a("1.2.3.9") != other_key("1.2.3.9")
    assert len(a("1.2.3.9")) <= 64 and a("") == ""


def test_burned_in_annotation_is_refused() -> None:
    ds = _identified()[0]
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="burned-in"):
        deidentify(copy.deepcopy(ds), UidMapper(KEY, "1"))


def test_a_seg_is_built_over_deidentified_sources_and_says_so(tmp_path: Path) -> None:
    paths = _write(_identified(), tmp_path / "in")
    out = [tmp_path / f"o{n}.dcm" for n in range(len(paths))]
    for src, dst in zip(paths, out, strict=True):
        deidentify_file(src, dst, KEY)
    volume, datasets = read_dicom_volume_and_datasets(out)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[100:200, 100:200, :] = 1

    class Card:
        id, version, labels, colors = "m", "1", {0: "background", 1: "liver"}, {1: (200, 80, 60)}

    seg = build_seg(labels, datasets, Card())
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.PatientIdentityRemoved == "YES"
    assert seg.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_uid_key_is_made_once_even_when_processes_race(tmp_path: Path) -> None:
    keys: list[bytes] = []
    barrier = threading.Barrier(4)

    def make() -> None:
        barrier.wait()
        keys.append(uid_key(tmp_path))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert (tmp_path / "deid" / "uid.key").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (tmp_path / "deid").iterdir()) == ["uid.key"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_uid_pairs_are_stored_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    init_db(url)
    paths = _write(_identified(), tmp_path / "in")
    outcomes = [deidentify_file(p, tmp_path / f"o{n}.dcm", KEY) for n, p in enumerate(paths)]
    with new_session(url) as session:
        save_uid_pairs(session, outcomes)
        save_uid_pairs(session, outcomes)  # again: nothing new, no error
        rows = session.scalars(select(DeidUid)).all()
    study = outcomes[0].original_study_uid
    assert {r.original for r in rows} >= {study, outcomes[2].original_sop_instance_uid}
    assert len(rows) == len({p for o in outcomes for p in o.pairs})
    assert all(r.original_study_uid == study and r.created_at is not None for r in rows)
