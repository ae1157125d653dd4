"""DICOM series assembly: sorting, geometry (affine by hand from IPP/IOP), validation, rescale, codecs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from segserve.imaging.errors import CorruptImage, ImageError, InvalidSeries, NotVolumetric, UnsupportedFormat
from segserve.scans.readers import check_same_grid, read_image
from tests.imaging.conftest import SeriesMaker, ipp_to_ras, shared, tilt_offsets


def _hand_affine_check(volume_affine: np.ndarray, paths: list[Path]) -> None:
    """Voxel (0, 0, k) is slice k's IPP, and (i, j) steps follow IOP and PixelSpacing, all in RAS."""
    datasets = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in paths),
        key=lambda ds: float(ds.ImagePositionPatient[2]),  # axial slices: normal is +z (LPS)
    )
    for k, ds in enumerate(datasets):
        assert volume_affine @ [0, 0, k, 1] == pytest.approx(
            [*ipp_to_ras(ds.ImagePositionPatient), 1], abs=1e-4
        )
        row_cos = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        col_cos = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        i, j = 17, 301
        lps = (
            np.array([float(v) for v in ds.ImagePositionPatient])
            + i * col_spacing * row_cos
            + j * row_spacing * col_cos
        )
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        assert volume_affine @ [i, j, k, 1] == pytest.approx(ras, abs=1e-4)


def _expected_stack(paths: list[Path]) -> np.ndarray:
    """Slices sorted by z, (rows, cols) transposed to (cols, rows), rescaled."""
    slices = []
    for ds in sorted((pydicom.dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2])):
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        slices.append(ds.pixel_array.T.astype(np.float64) * slope + intercept)
    return np.stack(slices, axis=-1)


def test_ct_three_slices(ct3: list[Path]) -> None:
    volume = read_image(ct3)
    assert volume.source_format == "dicom"
    assert volume.shape == (512, 512, 3)
    assert volume.array.dtype == np.int16  # slope 1, intercept -1024
    assert np.array_equal(volume.array, _expected_stack(ct3))
    assert volume.array.min() < -900  # HU, not raw stored values
    _hand_affine_check(volume.affine, ct3)
    assert volume.spacing_mm == pytest.approx((0.810547, 0.810547, 1.0), abs=1e-5)


def test_mr_three_slices(mr3: list[Path]) -> None:
    volume = read_image(mr3)
    assert volume.shape == (512, 512, 3)
    assert volume.array.dtype == np.int16
    assert np.array_equal(volume.array, _expected_stack(mr3))
    _hand_affine_check(volume.affine, mr3)
    assert volume.meta["modality"] == "MR"


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_shuffled_input_comes_out_sorted(ct3: list[Path], order: tuple[int, ...]) -> None:
    reference = read_image(ct3)
    shuffled = read_image([ct3[i] for i in order])
    assert np.array_equal(shuffled.array, reference.array)
    assert np.array_equal(shuffled.affine, reference.affine)
    assert shuffled.meta["sop_instance_uids"] == reference.meta["sop_instance_uids"]


def test_meta_has_uids_in_slice_order_and_no_patient_data(ct3: list[Path]) -> None:
    volume = read_image(ct3)
    meta = volume.meta
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct3]
    by_z = sorted(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert meta["sop_instance_uids"] == [str(ds.SOPInstanceUID) for ds in by_z]
    assert meta["series_instance_uid"] == str(headers[0].SeriesInstanceUID)
    assert meta["study_instance_uid"] == str(headers[0].StudyInstanceUID)
    assert meta["frame_of_reference_uid"] == str(headers[0].FrameOfReferenceUID)
    assert meta["modality"] == "CT" and meta["series_number"] == 2 and meta["n_slices"] == 3
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2"
    text = repr(meta)
    for ds in headers:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 3:
                assert value not in text


def test_matches_the_nrrd_label_grid_of_the_same_slices(ct3: list[Path]) -> None:
    """dcmqi wrote liver_seg.nrrd on these slices: an independent check of our DICOM geometry."""
    check_same_grid(read_image(ct3), read_image([shared("dicom/ct-3slice/liver_seg.nrrd")]), atol_mm=1e-3)


def test_seg_next_to_the_slices_is_skipped(ct3: list[Path]) -> None:
    volume = read_image([*ct3, shared("dicom/ct-3slice/liver.dcm")])
    assert volume.shape == (512, 512, 3)
    assert volume.meta["skipped_objects"] == {"segmentation (SEG)": 1}


def test_only_a_seg_is_refused() -> None:
    with pytest.raises(InvalidSeries, match=r"no DICOM image slices.*segmentation"):
        read_image([shared("dicom/ct-3slice/liver.dcm")])


def test_single_slice_is_not_volumetric(ct3: list[Path]) -> None:
    with pytest.raises(NotVolumetric, match="a single 2D slice"):
        read_image(ct3[:1])


def test_two_series_are_refused_without_patient_data(ct3: list[Path], mr3: list[Path]) -> None:
    with pytest.raises(InvalidSeries) as info:
        read_image([ct3[0], mr3[0], ct3[1], mr3[1]])
    message = str(info.value)
    assert "2 DICOM series" in message and "CT" in message and "MR" in message
    assert info.value.code == "multiple_series"
    for path in (ct3[0], mr3[0]):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 3:
                assert value not in message


def test_synthetic_five_slices(make_series: SeriesMaker) -> None:
    paths = make_series([0.0, 2.5, 5.0, 7.5, 10.0])
    volume = read_image(list(reversed(paths)))
    assert volume.shape == (512, 512, 5)
    assert volume.spacing_mm[2] == pytest.approx(2.5)
    assert [int(volume.array[5, 0, k]) for k in range(5)] == [100 * k - 1024 for k in range(5)]
    _hand_affine_check(volume.affine, paths)


def test_non_square_pixels_sagittal(make_series: SeriesMaker) -> None:
    """PixelSpacing[0] = row spacing (along the column cosine, J); [1] = column spacing (I)."""
    row_cos, col_cos = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])  # sagittal; normal = (-1, 0, 0)

    def sagittal(ds: pydicom.Dataset, k: int) -> None:
        ds.PixelSpacing = [0.5, 0.8]
        ds.ImageOrientationPatient = [*row_cos, *col_cos]
        ds.ImagePositionPatient = [40.0 - 1.5 * k, -20.0, 60.0]

    paths = make_series([0.0, 0.0, 0.0], edit=sagittal)
    volume = read_image([paths[2], paths[0], paths[1]])
    assert volume.spacing_mm == pytest.approx((0.8, 0.5, 1.5))
    # Ascending along the normal (-x): slice 0 is the file with x = 40.
    assert [int(volume.array[3, 0, k]) for k in range(3)] == [-1024, 100 - 1024, 200 - 1024]
    for k in range(3):
        i, j = 10, 20
        lps = np.array([40.0 - 1.5 * k, -20.0, 60.0]) + i * 0.8 * row_cos + j * 0.5 * col_cos
        assert volume.affine @ [i, j, k, 1] == pytest.approx([-lps[0], -lps[1], lps[2], 1.0], abs=1e-6)


def test_missing_slice(make_series: SeriesMaker) -> None:
    paths = make_series([0.0, 2.5, 5.0, 7.5, 10.0])
    del paths[2]
    with pytest.raises(
        InvalidSeries, match=r"slices are missing: a gap of 5\.00 mm between slices 2 and 3"
    ) as info:
        read_image(paths)
    assert info.value.code == "missing_slices"


def test_non_uniform_spacing(make_series: SeriesMaker) -> None:
    paths = make_series([0.0, 2.5, 5.3, 7.5, 10.0])
    with pytest.raises(InvalidSeries, match="slice spacing is not uniform"):
        read_image(paths)


def test_duplicate_positions(make_series: SeriesMaker) -> None:
    paths = make_series([0.0, 2.5, 2.5, 5.0])
    with pytest.raises(InvalidSeries, match="duplicate slice positions"):
        read_image(paths)


def test_gantry_tilt(make_series: SeriesMaker) -> None:
    paths = make_series([0.0, 2.5, 5.0, 7.5], in_plane_mm=tilt_offsets(4, 2.5, 15.0))
    with pytest.raises(InvalidSeries, match=r"gantry tilt of 15\.0 degrees") as info:
        read_image(paths)
    assert info.value.code == "gantry_tilt"


def test_mixed_orientation(make_series: SeriesMaker) -> None:
    def rotate_last(ds: pydicom.Dataset, k: int) -> None:
        if k == 3:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    with pytest.raises(InvalidSeries, match="different orientations"):
        read_image(make_series([0.0, 2.5, 5.0, 7.5], edit=rotate_last))


def test_mixed_pixel_spacing(make_series: SeriesMaker) -> None:
    def respace(ds: pydicom.Dataset, k: int) -> None:
        if k == 1:
            ds.PixelSpacing = [0.7, 0.7]

    with pytest.raises(InvalidSeries, match="different pixel spacings"):
        read_image(make_series([0.0, 2.5, 5.0], edit=respace))


def test_float_rescale(make_series: SeriesMaker) -> None:
    def rescale(ds: pydicom.Dataset, k: int) -> None:
        ds.RescaleSlope = 0.5
        ds.RescaleIntercept = 10.25

    paths = make_series([0.0, 2.0, 4.0], edit=rescale)
    volume = read_image(paths)
    assert volume.array.dtype == np.float32
    raw = pydicom.dcmread(paths[1]).pixel_array.T
    assert np.array_equal(volume.array[:, :, 1], raw.astype(np.float32) * 0.5 + 10.25)


def test_without_preamble_reads(ct3: list[Path], tmp_path: Path) -> None:
    bare = []
    for n, path in enumerate(ct3):
        target = tmp_path / f"IM{n}"
        target.write_bytes(path.read_bytes()[132:])
        bare.append(target)
    assert np.array_equal(read_image(bare).array, read_image(ct3).array)


def _bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled offline")
    return Path(str(path))


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_compressed_series_decode_like_uncompressed(make_series: SeriesMaker, name: str) -> None:
    source = _bundled(name)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    plain = make_series([0.0, 1.0, 2.0], source=_bundled("MR_small.dcm"), folder="plain", mark=False)
    packed = make_series([0.0, 1.0, 2.0], source=source, folder="packed", mark=False)
    expected = read_image(plain)
    volume = read_image(packed)
    assert volume.shape == (64, 64, 3)
    assert volume.meta["transfer_syntax"] == str(ds.file_meta.TransferSyntaxUID)
    assert np.array_equal(volume.array, expected.array)
    assert int(np.abs(volume.array).max()) > 0


def _enhanced(paths: list[Path], out: Path, *, with_groups: bool = True) -> Path:
    """An enhanced multi-frame CT made from classic slices, frames stored in the order of `paths`."""
    slices = [pydicom.dcmread(p) for p in paths]
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "Modality",
        "SeriesNumber",
    ):
        setattr(ds, keyword, first.get(keyword))
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, first.get(keyword))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(slices)
    if with_groups:
        shared_groups = Dataset()
        orientation = Dataset()
        orientation.ImageOrientationPatient = first.ImageOrientationPatient
        measures = Dataset()
        measures.PixelSpacing = first.PixelSpacing
        measures.SliceThickness = first.SliceThickness
        transform = Dataset()
        transform.RescaleSlope = first.RescaleSlope
        transform.RescaleIntercept = first.RescaleIntercept
        transform.RescaleType = "HU"
        shared_groups.PlaneOrientationSequence = DicomSequence([orientation])
        shared_groups.PixelMeasuresSequence = DicomSequence([measures])
        shared_groups.PixelValueTransformationSequence = DicomSequence([transform])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared_groups])
        per_frame = []
        for s in slices:
            position = Dataset()
            position.ImagePositionPatient = s.ImagePositionPatient
            frame = Dataset()
            frame.PlanePositionSequence = DicomSequence([position])
            per_frame.append(frame)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = b"".join(s.pixel_array.tobytes() for s in slices)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_enhanced_multiframe(ct3: list[Path], tmp_path: Path) -> None:
    classic = read_image(ct3)
    # z of 01, 02, 03 = -126.69, -127.69, -128.69; stored as frames 1..3 = [02, 03, 01].
    volume = read_image([_enhanced([ct3[1], ct3[2], ct3[0]], tmp_path / "enhanced.dcm")])
    assert volume.shape == (512, 512, 3)
    assert np.array_equal(volume.array, classic.array)
    assert np.allclose(volume.affine, classic.affine)
    assert volume.meta["frame_numbers"] == [2, 1, 3]  # in slice order: 03, 02, 01
    assert volume.meta["n_slices"] == 3


def test_multiframe_without_positions_is_refused(ct3: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not supported yet"):
        read_image([_enhanced(ct3, tmp_path / "legacy.dcm", with_groups=False)])


def test_colour_is_refused(make_series: SeriesMaker) -> None:
    source = _bundled("SC_rgb_small_odd.dcm")

    def place(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.ImagePositionPatient = [0, 0, float(k)]

    with pytest.raises(ImageError, match="colour DICOM"):
        read_image(make_series([0.0, 1.0], source=source, edit=place, mark=False))


@pytest.mark.parametrize("keep", [300, 2_000, 200_000])
def test_truncated_slice_is_corrupt(ct3: list[Path], tmp_path: Path, keep: int) -> None:
    """Cut in the meta header, before the pixel data, and inside it: never skipped silently."""
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ct3[1].read_bytes()[:keep])
    with pytest.raises(CorruptImage, match="file 2 of 3"):
        read_image([ct3[0], cut, ct3[2]])


def test_several_files_must_all_be_dicom(ct3: list[Path]) -> None:
    with pytest.raises(
        UnsupportedFormat, match=r"file 3 of 3 is a NIfTI volume: several files are accepted only"
    ):
        read_image([ct3[0], ct3[1], shared("ct/abdomen-totalseg/example_ct_sm.nii.gz")])
    with pytest.raises(ImageError, match="no file"):
        read_image([])


def _dicomdir_tests() -> Path:
    path = get_testdata_file("DICOMDIR", download=False)
    if path is None:
        pytest.skip("pydicom's dicomdirtests folder is not bundled")
    return Path(str(path)).parent


def test_pydicom_bundled_series() -> None:
    """Real exported series from pydicom's bundled DICOMDIR test set."""
    root = _dicomdir_tests()
    ct5 = sorted((root / "98892001" / "CT5N").iterdir())
    volume = read_image(ct5)
    assert volume.shape == (16, 16, 5)
    assert volume.spacing_mm[2] == pytest.approx(2.5)
    assert volume.affine[2, 3] == pytest.approx(-1.2375)  # lowest slice first (IPP z from -1.2375 to 8.7625)
    with pytest.raises(InvalidSeries, match="different orientations"):
        read_image(sorted((root / "98892003" / "MR700").iterdir()))
    with pytest.raises(InvalidSeries, match="2 DICOM series"):
        read_image([*ct5, *sorted((root / "98892001" / "CT2N").iterdir())])
