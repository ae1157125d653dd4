"""DICOM SEG export (segserve.dicom.seg) on real DICOM series: references, segments and codes, and voxel-exact
round trips through highdicom and through dcmqi's segimage2itkimage."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models.catalog import builtin_cards
from segserve.dicom import seg as dicom_seg
from segserve.dicom.seg import EmptySegmentation, SegExportError, SegUnavailable, build_seg, snomed_code_for
from segserve.imaging.volume import Volume
from segserve.imaging.writers import write_labels_nifti
from segserve.scans.seg_export import (
    export_job_seg,
    read_dicom_volume_and_datasets,
    seg_result_path,
    try_export_job_seg,
)
from tests.support.paths import DATA
from tests.support.seg_compare import dcmqi_read, place_on_grid, seg_to_labels

SERIES = {"ct-3slice": "0*.dcm", "mr-3slice": "1-*.dcm"}
CARD = {c.id: c for c in builtin_cards()}["brain-mri-structures"]
THALAMUS, HIPPOCAMPUS, VENTRAL_DC = 7, 14, 17  # VentralDC has no certain SNOMED concept: Tissue fallback


@dataclass
class Series:
    name: str
    paths: list[Path]
    volume: Volume
    datasets: list[Dataset]


def _paths(name: str) -> list[Path]:
    folder = DATA / "dicom" / name
    if not folder.is_dir():
        pytest.skip(f"shared DICOM data not found at {folder}")
    return sorted(folder.glob(SERIES[name]))


@pytest.fixture(scope="module", params=sorted(SERIES))
def series(request: pytest.FixtureRequest) -> Series:
    paths = _paths(request.param)
    volume, datasets = read_dicom_volume_and_datasets(paths)
    return Series(request.param, paths, volume, datasets)


def blobs(shape: tuple[int, int, int]) -> np.ndarray:
    """(I, J, K) labels: three structures, asymmetric in I vs J so that a transposed frame is caught."""
    cols, rows, n = shape
    labels = np.zeros(shape, dtype=np.uint8)
    ii, jj = np.ogrid[:cols, :rows]
    ellipse = ((ii - 0.3 * cols) / 40.0) ** 2 + ((jj - 0.6 * rows) / 15.0) ** 2 <= 1.0
    labels[:, :, 0][ellipse] = THALAMUS
    labels[:, :, 1][ellipse] = THALAMUS
    labels[300:360, 100:120, 1:n] = HIPPOCAMPUS
    labels[20:23, 400:430, n - 1] = VENTRAL_DC
    return labels


@pytest.fixture(scope="module")
def built(series: Series) -> tuple[Series, np.ndarray, hd.seg.Segmentation]:
    labels = blobs(series.volume.shape)
    return series, labels, build_seg(labels, series.datasets, CARD)


def test_sources_come_in_slice_order(series: Series) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    assert uids == series.volume.meta["sop_instance_uids"]
    normal = np.cross(*np.reshape(np.asarray(series.datasets[0].ImageOrientationPatient, float), (2, 3)))
    along = [float(np.asarray(ds.ImagePositionPatient, float) @ normal) for ds in series.datasets]
    assert along == sorted(along)
    if series.name == "ct-3slice":  # its files run against the normal: 03.dcm is slice K = 0
        names = {
            str(ds.SOPInstanceUID): p.name for p, ds in zip(series.paths, _headers(series.paths), strict=True)
        }
        assert [names[u] for u in uids] == ["03.dcm", "02.dcm", "01.dcm"]


def _headers(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def test_seg_references_the_source_series(built: tuple[Series, np.ndarray, hd.seg.Segmentation]) -> None:
    series, labels, seg = built
    first = series.datasets[0]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in series.datasets
    }
    # Each frame names its source slice, sits at that slice's position and holds that slice's pixels.
    index_of = {ds.SOPInstanceUID: k for k, ds in enumerate(series.datasets)}
    pixels = seg.pixel_array  # (frames, rows, columns), one segment each
    for f, groups in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index_of[uid]
        position = groups.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position],
            [float(v) for v in series.datasets[k].ImagePositionPatient],
            atol=1e-3,
        )
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = [THALAMUS, HIPPOCAMPUS, VENTRAL_DC][number - 1] if number <= 3 else -1
        np.testing.assert_array_equal(pixels[f].astype(bool), value == labels[:, :, k].T)
    assert int(seg.NumberOfFrames) == 5  # empty frames are omitted: thalamus 2, hippocampus 2, VentralDC 1
    assert seg.Manufacturer == "segserve" and seg.SoftwareVersions


def test_segments_labels_codes_colours_algorithm(
    built: tuple[Series, np.ndarray, hd.seg.Segmentation],
) -> None:
    _, _, seg = built
    segments = list(seg.SegmentSequence)
    assert [int(s.SegmentNumber) for s in segments] == [1, 2, 3]
    assert [s.SegmentLabel for s in segments] == ["Thalamus", "Hippocampus", "VentralDC"]
    assert segments[0].SegmentDescription == f"label 7 of model {CARD.id} {CARD.version}"
    thalamus, hippocampus, ventral_dc = segments
    for segment, code in ((thalamus, codes.SCT.Thalamus), (hippocampus, codes.SCT.Hippocampus)):
        prop = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == (code.value, "SCT")
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        assert category.CodeValue == codes.SCT.AnatomicalStructure.value
    assert thalamus.SegmentedPropertyTypeCodeSequence[0].CodeValue == "42695009"
    fallback = ventral_dc.SegmentedPropertyTypeCodeSequence[0]
    assert fallback.CodeValue == codes.SCT.Tissue.value == "85756007"
    assert ventral_dc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.Tissue.value
    for segment, value in zip(segments, (THALAMUS, HIPPOCAMPUS, VENTRAL_DC), strict=True):
        lab = hd.color.CIELabColor.from_dicom_value(
            tuple(int(v) for v in segment.RecommendedDisplayCIELabValue)
        )
        assert np.max(np.abs(np.subtract(lab.to_rgb(), CARD.colors[value]))) <= 1
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (CARD.id, CARD.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


def test_highdicom_round_trip_is_voxel_exact(
    built: tuple[Series, np.ndarray, hd.seg.Segmentation], tmp_path: Path
) -> None:
    series, labels, seg = built
    path = tmp_path / "x.seg.dcm"
    seg.save_as(path)
    back = seg_to_labels(hd.seg.segread(path), series.volume.meta["sop_instance_uids"], CARD.labels)
    np.testing.assert_array_equal(back, labels)


def test_dcmqi_reads_it_voxel_exact_in_physical_space(
    built: tuple[Series, np.ndarray, hd.seg.Segmentation], tmp_path: Path
) -> None:
    """segimage2itkimage --mergeSegments -t nifti writes slices in increasing z with its own affine; map its
    voxels onto our grid through both affines (RAS) and compare every voxel."""
    series, labels, seg = built
    path = tmp_path / "x.seg.dcm"
    seg.save_as(path)
    theirs, their_affine = dcmqi_read(path, tmp_path / "dcmqi", CARD.labels)
    ours = place_on_grid(theirs, their_affine, labels.shape, series.volume.affine)
    np.testing.assert_array_equal(ours, labels)
    assert int(np.count_nonzero(theirs)) == int(np.count_nonzero(labels))


def test_dcmqi_reads_a_seg_with_one_segment_on_one_slice(series: Series, tmp_path: Path) -> None:
    labels = np.zeros(series.volume.shape, dtype=np.uint8)
    labels[200:260, 10:30, 1] = 2  # Cerebral-Cortex, middle slice only
    path = tmp_path / "one.seg.dcm"
    build_seg(labels, series.datasets, CARD).save_as(path)
    theirs, their_affine = dcmqi_read(path, tmp_path / "dcmqi", CARD.labels)
    np.testing.assert_array_equal(
        place_on_grid(theirs, their_affine, labels.shape, series.volume.affine), labels
    )


def test_empty_character_set_is_handled_without_touching_the_sources(series: Series) -> None:
    before = [copy.deepcopy(ds) for ds in series.datasets]
    seg = build_seg(blobs(series.volume.shape), series.datasets, CARD)
    assert series.datasets == before
    if series.name == "ct-3slice":
        assert series.datasets[0].SpecificCharacterSet == ""  # still as the scanner wrote it
        assert "SpecificCharacterSet" not in seg or seg.SpecificCharacterSet != ""
    assert any(e.tag.is_private for e in series.datasets[0])  # the sources have private tags ...
    assert not any(e.tag.is_private for e in seg)  # ... the SEG has none


def test_all_background_gives_every_structure_as_an_empty_segment(series: Series, tmp_path: Path) -> None:
    """Nothing found is a result for PACS too: a valid SEG naming what the model looked for, all empty,
    which reads back as background on the series' own frames."""
    empty = np.zeros(series.volume.shape, dtype=np.uint8)
    seg = build_seg(empty, series.datasets, CARD)
    structures = sorted(v for v in CARD.labels if v > 0)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [CARD.labels[v] for v in structures]
    assert [s.SegmentDescription.split()[1] for s in seg.SegmentSequence] == [str(v) for v in structures]
    path = tmp_path / "empty.dcm"
    seg.save_as(path)
    back = seg_to_labels(hd.seg.segread(path), series.volume.meta["sop_instance_uids"], CARD.labels)
    np.testing.assert_array_equal(back, empty)
    assert seg.StudyInstanceUID == series.datasets[0].StudyInstanceUID
    # a card without structures cannot make one
    no_structures = dataclasses.replace(CARD, labels={0: "background"}, colors={0: (0, 0, 0)})
    with pytest.raises(EmptySegmentation) as info:
        build_seg(empty, series.datasets, no_structures)
    assert info.value.code == "empty_segmentation"


def test_grid_and_source_problems_are_named(series: Series) -> None:
    cols, rows, n = series.volume.shape
    with pytest.raises(SegExportError, match="slices") as info:
        build_seg(np.ones((cols, rows, n + 1), dtype=np.uint8), series.datasets, CARD)
    assert info.value.code == "grid_mismatch"
    with pytest.raises(SegExportError, match="columns x rows"):
        build_seg(np.ones((cols, rows - 1, n), dtype=np.uint8), series.datasets, CARD)
    mixed = [copy.deepcopy(ds) for ds in series.datasets]
    mixed[0].NumberOfFrames = 2
    with pytest.raises(SegExportError, match="multi-frame") as info:
        build_seg(blobs(series.volume.shape), mixed, CARD)
    assert info.value.code == "unsupported_source"
    with pytest.raises(SegExportError, match="integers"):
        build_seg(np.ones(series.volume.shape, dtype=np.float32), series.datasets, CARD)
    with pytest.raises(SegExportError, match="negative"):
        build_seg(-np.ones(series.volume.shape, dtype=np.int16), series.datasets, CARD)


def test_every_mapped_name_has_a_code_in_the_dictionary() -> None:
    for keyword in set(dicom_seg._SCT_BY_NAME.values()):
        assert getattr(codes.SCT, keyword).scheme_designator == "SCT", keyword
    mapped = {
        name: concept.value
        for card in builtin_cards()
        for name in card.labels.values()
        if (concept := snomed_code_for(name)) is not None
    }
    assert mapped["Brain-Stem"] == codes.SCT.BrainStem.value
    assert mapped["Pallidum"] == codes.SCT.GlobusPallidus.value
    assert mapped["Accumbens-area"] == codes.SCT.NucleusAccumbens.value
    assert mapped["Grey Matter"] == codes.SCT.GrayMatter.value
    assert "VentralDC" not in mapped and "brain mask" not in mapped and "background" not in mapped
    assert snomed_code_for("Liver") is not None and snomed_code_for("liver tumour") is None


def test_sources_from_a_zip_match_the_files(series: Series, tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in series.paths:
            zf.write(p, f"a/{p.name}")
        zf.writestr("README.txt", "not DICOM")
    volume, datasets = read_dicom_volume_and_datasets([archive])
    assert [d.SOPInstanceUID for d in datasets] == [d.SOPInstanceUID for d in series.datasets]
    np.testing.assert_array_equal(volume.affine, series.volume.affine)


def test_export_job_seg_writes_the_file_and_records_failures(series: Series, tmp_path: Path) -> None:
    labels = blobs(series.volume.shape)
    labels_path = tmp_path / "labels.nii.gz"
    write_labels_nifti(labels, series.volume, labels_path)
    out = tmp_path / "result" / "labels.seg.dcm"
    assert export_job_seg(series.paths, labels_path, CARD, out) == out
    assert seg_result_path(out) == out and not list(out.parent.glob(".*.tmp"))
    back = seg_to_labels(hd.seg.segread(out), series.volume.meta["sop_instance_uids"], CARD.labels)
    np.testing.assert_array_equal(back, labels)

    # all background: still a SEG, every structure of the card as an empty segment
    write_labels_nifti(np.zeros_like(labels), series.volume, labels_path)
    empty_out = tmp_path / "empty" / "labels.seg.dcm"
    assert try_export_job_seg(series.paths, labels_path, CARD, empty_out, job_id="j1") == empty_out
    assert seg_result_path(empty_out) == empty_out
    assert len(hd.seg.segread(empty_out).SegmentSequence) == len(CARD.labels) - 1
    # a failed export keeps its reason for the API
    unusable = dataclasses.replace(CARD, labels={0: "background"}, colors={0: (0, 0, 0)})
    failed_out = tmp_path / "failed" / "labels.seg.dcm"
    assert try_export_job_seg(series.paths, labels_path, unusable, failed_out, job_id="j1") is None
    assert not failed_out.exists()
    with pytest.raises(SegUnavailable) as info:
        seg_result_path(failed_out)
    assert info.value.code == "empty_segmentation"
    assert json.loads((failed_out.parent / "labels.seg.dcm.error.json").read_text())["code"] == (
        "empty_segmentation"
    )
    # nothing recorded at all (not a DICOM job, or not finished)
    with pytest.raises(SegUnavailable) as info:
        seg_result_path(tmp_path / "nothing" / "labels.seg.dcm")
    assert info.value.code == "seg_not_available"


def test_export_job_seg_rejects_a_result_on_another_grid(series: Series, tmp_path: Path) -> None:
    labels_path = tmp_path / "labels.nii.gz"
    shifted = Volume(
        array=series.volume.array,
        affine=series.volume.affine @ np.diag([1.0, 1.0, 2.0, 1.0]),
        source_format="nifti",
    )
    write_labels_nifti(blobs(series.volume.shape), shifted, labels_path)
    with pytest.raises(SegExportError, match="affine"):
        export_job_seg(series.paths, labels_path, CARD, tmp_path / "x.seg.dcm")


def test_enhanced_multi_frame_source(tmp_path: Path) -> None:
    """One enhanced (legacy-converted) MR object holding the 3 MR slices with its frames in DEcreasing z:
    the reader sorts them (meta frame_numbers [3, 2, 1]) and the SEG references each source frame; highdicom
    (by source frame) and dcmqi (in physical space) read back the label volume exactly."""
    paths = _paths("mr-3slice")
    legacy = [pydicom.dcmread(p) for p in reversed(paths)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
            legacy_datasets=legacy,
            series_instance_uid=hd.UID(),
            series_number=5,
            sop_instance_uid=hd.UID(),
            instance_number=1,
        )
    source = tmp_path / "enhanced.dcm"
    enhanced.save_as(source)
    volume, datasets = read_dicom_volume_and_datasets([source])
    assert len(datasets) == 1 and volume.meta["frame_numbers"] == [3, 2, 1]
    labels = blobs(volume.shape)
    labels_path = tmp_path / "labels.nii.gz"
    write_labels_nifti(labels, volume, labels_path)
    out = export_job_seg([source], labels_path, CARD, tmp_path / "labels.seg.dcm")
    seg = hd.seg.segread(out)
    for groups in seg.PerFrameFunctionalGroupsSequence:
        ref = groups.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == datasets[0].SOPInstanceUID
        k = volume.meta["frame_numbers"].index(int(ref.ReferencedFrameNumber))
        z = float(groups.PlanePositionSequence[0].ImagePositionPatient[2])
        assert z == pytest.approx(float((np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine @ [0, 0, k, 1])[2]))
    frames = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=datasets[0].SOPInstanceUID,
        source_frame_numbers=volume.meta["frame_numbers"],
        combine_segments=True,
        relabel=False,
    )
    lut = np.zeros(VENTRAL_DC + 1, dtype=np.uint8)
    lut[[1, 2, 3]] = [THALAMUS, HIPPOCAMPUS, VENTRAL_DC]
    np.testing.assert_array_equal(np.transpose(lut[frames], (2, 1, 0)), labels)
    theirs, their_affine = dcmqi_read(out, tmp_path / "dcmqi", CARD.labels)
    np.testing.assert_array_equal(place_on_grid(theirs, their_affine, labels.shape, volume.affine), labels)
