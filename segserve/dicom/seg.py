"""DICOM SEG export of a job's label volume, for jobs whose input was a DICOM series.

A SEG object (Segmentation Storage, BINARY segmentation type) is built with highdicom. It references the
source series (Study / Series / SOP Instance UIDs and the Frame of Reference of the source slices), so PACS
and viewers (3D Slicer, OHIF, dcmqi) overlay it on the scan it was computed from.

Segments: one per structure PRESENT in the label volume (value > 0 with at least one voxel). Absent
structures are left out: a SEG segment with no frame is legal but clutters every viewer's segment list.
Segment numbers are therefore 1..N in increasing label value, NOT the model's label
values; each segment carries the model's value in its SegmentDescription ("label 7 of model ...") and the
structure name as SegmentLabel. A label volume with no structure at all is still an answer for PACS (the
model looked and found nothing): its SEG lists every structure of the model card as an empty segment, with
all frames empty (the Segment Sequence needs at least one item; highdicom then keeps the empty frames, and
dcmqi reads them back as empty masks). Only a card with no structure raises `EmptySegmentation`; the export
records such reasons for the API (see `seg_result_path`).

Codes: the segmented property type is a SNOMED CT concept from pydicom's code dictionary when the structure
name maps to one with certainty (`_SCT_BY_NAME`, exact names only), with category Anatomical Structure;
any other structure gets category Tissue and type Tissue, and its name only as the segment label.

Orientation: segserve's DICOM volumes are (I, J, K) = (column, row, slice in ascending order along the
normal); the frame for source slice k is `labels[:, :, k].T`, shape (Rows, Columns). Sources are single-frame
images (any order on disk: they are matched to the reader's slice order by SOP Instance UID) or one enhanced
multi-frame image (each slice goes to its source frame, `Volume.meta["frame_numbers"]`).

Quirks handled: an empty SpecificCharacterSet (real scanners write it; highdicom refuses it) is dropped on a
copy of each source; private tags are left in the sources and not copied into the SEG.

A job's SEG is written by :mod:`segserve.scans.seg_export` (which re-reads the job's stored DICOM files);
the API finds it, or the recorded reason why there is none, with its `seg_result_path`.

Nothing identifying is logged. The SEG itself carries the source's patient and study attributes, as DICOM
requires.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Protocol

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

log = logging.getLogger(__name__)
# highdicom logs each source's SOP Instance UID at INFO while building; UIDs are identifiers: keep them out.
logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger("highdicom").level))

MANUFACTURER = "segserve"
#: Added to the source's SeriesNumber for the SEG's series number when none is given.
SERIES_NUMBER_OFFSET = 1000

#: Normalised structure name -> pydicom SCT keyword. Exact names only: a name that is not here gets the
#: Tissue/Tissue fallback. Every keyword is checked against the code dictionary (tests do too).
_SCT_BY_NAME: dict[str, str] = {
    # brain (FreeSurfer-style names of the brain-structures model, and plain names)
    "cerebralwhitematter": "CerebralWhiteMatter",
    "cerebralcortex": "CerebralCortex",
    "lateralventricle": "LateralVentricle",
    "inferiorlateralventricle": "InferiorHornOfLateralVentricle",
    "cerebellumwhitematter": "CerebellarWhiteMatter",
    "cerebellarwhitematter": "CerebellarWhiteMatter",
    "cerebellumcortex": "CerebellarCortex",
    "cerebellarcortex": "CerebellarCortex",
    "thalamus": "Thalamus",
    "caudate": "CaudateNucleus",
    "caudatenucleus": "CaudateNucleus",
    "putamen": "Putamen",
    "pallidum": "GlobusPallidus",
    "globuspallidus": "GlobusPallidus",
    "3rdventricle": "ThirdVentricle",
    "thirdventricle": "ThirdVentricle",
    "4thventricle": "FourthVentricle",
    "fourthventricle": "FourthVentricle",
    "brainstem": "BrainStem",
    "hippocampus": "Hippocampus",
    "amygdala": "Amygdala",
    "accumbensarea": "NucleusAccumbens",
    "nucleusaccumbens": "NucleusAccumbens",
    "cerebellum": "Cerebellum",
    "brain": "Brain",
    "whitematter": "WhiteMatter",
    "greymatter": "GrayMatter",
    "graymatter": "GrayMatter",
    # abdomen / chest
    "liver": "Liver",
    "spleen": "Spleen",
    "kidney": "Kidney",
    "pancreas": "Pancreas",
    "stomach": "Stomach",
    "gallbladder": "Gallbladder",
    "heart": "Heart",
    "lung": "Lung",
}


class ModelCardLike(Protocol):
    """What `build_seg` needs of a model card (models.catalog.ModelCard fits)."""

    @property
    def id(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def labels(self) -> Mapping[int, str]: ...

    @property
    def colors(self) -> Mapping[int, tuple[int, int, int]]: ...


class SegExportError(Exception):
    """A SEG cannot be made for this job; `code` is stable, the message names the reason in words."""

    def __init__(self, message: str, code: str = "seg_export_failed") -> None:
        super().__init__(message)
        self.code = code


class EmptySegmentation(SegExportError):
    """The label volume holds no structure and the model card lists none, and a SEG needs a segment."""

    def __init__(self) -> None:
        super().__init__(
            "the result holds no segmented structure (all voxels are background) and the model lists no "
            "structure, and a DICOM SEG must hold at least one segment",
            code="empty_segmentation",
        )


class SegUnavailable(SegExportError):
    """No SEG exists for a job (see `seg_result_path`)."""


# ---------------------------------------------------------------------------------------------- codes


def normalise_name(name: str) -> str:
    """Lowercase alphanumerics only: "Brain-Stem" -> "brainstem", "3rd-Ventricle" -> "3rdventricle"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def snomed_code_for(name: str) -> hd.sr.CodedConcept | None:
    """The SNOMED CT concept of structure `name` when it maps with certainty, else None."""
    keyword = _SCT_BY_NAME.get(normalise_name(name))
    if keyword is None:
        return None
    code = getattr(codes.SCT, keyword)  # AttributeError if the dictionary lacks it: a bug, not a fallback
    return hd.sr.CodedConcept(
        value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
    )


def _concept(keyword: str) -> hd.sr.CodedConcept:
    code = getattr(codes.SCT, keyword)
    return hd.sr.CodedConcept(
        value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
    )


# ---------------------------------------------------------------------------------------------- build


def _software_version() -> str:
    try:
        return metadata.version("segserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def _prepare_source(ds: Dataset) -> Dataset:
    """A copy of `ds` that highdicom accepts: an empty SpecificCharacterSet (default repertoire, written by
    real scanners) is removed. The caller's dataset is never modified."""
    out = copy.deepcopy(ds)
    if "SpecificCharacterSet" in out:
        raw = out.SpecificCharacterSet
        values = [str(v).strip() for v in (raw if isinstance(raw, MultiValue | list) else [raw])]
        if not any(values):
            del out.SpecificCharacterSet
        elif not values[0]:  # "\\ISO 2022 IR 100": an empty first value means the default repertoire
            out.SpecificCharacterSet = ["ISO 2022 IR 6", *values[1:]]
    return out


def _frames_of(
    labels: np.ndarray, sources: Sequence[Dataset], frame_numbers: Sequence[int] | None
) -> np.ndarray:
    """The SEG's (frames, Rows, Columns) array of `labels` (I, J, K), one frame per source frame.

    Single-frame sources: frame k = labels[:, :, k].T. One enhanced multi-frame source: its frame
    `frame_numbers[k]` (1-based) = labels[:, :, k].T. Raises SegExportError when the grid does not fit.
    """
    if labels.ndim != 3:
        raise SegExportError(f"the label volume must be 3D (I, J, K), not {labels.ndim}D", code="bad_labels")
    if not sources:
        raise SegExportError("no source DICOM images were given", code="no_sources")
    cols, rows, n = labels.shape
    for ds in sources:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise SegExportError(
                f"the label volume's slices are {cols}x{rows} (columns x rows) but a source image is "
                f"{int(ds.Columns)}x{int(ds.Rows)}",
                code="grid_mismatch",
            )
    n_frames = [int(ds.get("NumberOfFrames", 1) or 1) for ds in sources]
    stacked = np.transpose(labels, (2, 1, 0))  # (K, J, I) = (slices, rows, columns)
    if len(sources) == 1 and n_frames[0] > 1:
        numbers = list(frame_numbers) if frame_numbers is not None else []
        if sorted(numbers) != list(range(1, n_frames[0] + 1)) or len(numbers) != n:
            raise SegExportError(
                f"the label volume has {n} slices; the multi-frame source has {n_frames[0]} frames, and the "
                "slice -> frame numbers do not cover them one to one",
                code="grid_mismatch",
            )
        frames = np.empty_like(stacked)
        frames[np.asarray(numbers) - 1] = stacked
        return frames
    if max(n_frames) > 1:
        raise SegExportError(
            "DICOM SEG export of a series mixing multi-frame and other objects is not supported; send the "
            "series as single-frame files to get a SEG",
            code="unsupported_source",
        )
    if n != len(sources):
        raise SegExportError(
            f"the label volume has {n} slices but the series has {len(sources)} images", code="grid_mismatch"
        )
    return stacked


def build_seg(
    labels: np.ndarray,
    source_datasets: Sequence[Dataset],
    card: ModelCardLike,
    *,
    series_number: int | None = None,
    frame_numbers: Sequence[int] | None = None,
) -> hd.seg.Segmentation:
    """Build a DICOM SEG (BINARY) of `labels` over the source series.

    Args:
        labels: integer label volume, shape (I, J, K) = (Columns, Rows, n_slices), on the grid of the DICOM
            volume that `segserve.imaging` reads from `source_datasets` (K ascending along the normal).
        source_datasets: the series' single-frame image datasets in the volume's slice order (index k is
            slice K = k), or one enhanced multi-frame image. Pixel data is not needed. They are copied,
            never modified.
        card: the model card (id, version, labels {value: name}, colors {value: (r, g, b)}).
        series_number: the SEG's SeriesNumber; default: the source's SeriesNumber + 1000 (or 1000).
        frame_numbers: for one multi-frame source only: the 1-based source frame of each slice K
            (`Volume.meta["frame_numbers"]`).

    Returns:
        the SEG (a pydicom Dataset subclass): one segment per structure present, numbered 1..N in
        increasing label value (all structures of the card, empty, when none is present); the frames of
        source slice k hold the segments of `labels[:, :, k].T` (Rows, Columns). Empty frames are omitted
        unless every frame is empty.

    Raises:
        EmptySegmentation when no voxel is > 0 and the card lists no structure; SegExportError for a grid
        that does not fit the sources, or a series mixing multi-frame and single-frame objects.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise SegExportError(f"labels must be integers, not {labels.dtype}", code="bad_labels")
    if labels.size and int(labels.min()) < 0:
        raise SegExportError("labels must not be negative", code="bad_labels")
    frames = _frames_of(labels, source_datasets, frame_numbers)
    present = [int(v) for v in np.unique(labels) if v > 0]
    # Nothing found is a result too: then every structure the model looks for, as an empty segment.
    segment_values = present or sorted(int(v) for v in card.labels if int(v) > 0)
    if not segment_values:
        raise EmptySegmentation()

    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16 if len(segment_values) > 255 else np.uint8)
    for number, value in enumerate(present, start=1):
        lut[value] = number
    pixel_array = np.ascontiguousarray(lut[frames])  # (frames, rows, columns) of segment numbers

    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.id[:64], version=card.version[:64], family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for number, value in enumerate(segment_values, start=1):
        name = str(card.labels.get(value, f"label {value}")) or f"label {value}"
        concept = snomed_code_for(name)
        category = _concept("AnatomicalStructure") if concept is not None else _concept("Tissue")
        rgb = card.colors.get(value)
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=category,
            segmented_property_type=concept if concept is not None else _concept("Tissue"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=name[:64],
            display_color=None if rgb is None else hd.color.CIELabColor.from_rgb(*(int(c) for c in rgb)),
        )
        desc.SegmentDescription = f"label {value} of model {card.id} {card.version}"[:64]
        descriptions.append(desc)

    sources = [_prepare_source(ds) for ds in source_datasets]
    if series_number is None:
        try:
            series_number = int(sources[0].get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
        except (TypeError, ValueError):
            series_number = SERIES_NUMBER_OFFSET
        if series_number > 2**31 - 1:
            series_number = SERIES_NUMBER_OFFSET
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # private tags, odd VRs in sources: pydicom/highdicom chatter
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=_software_version(),
            device_serial_number="0",
            content_label="SEGSERVE",
            content_description=f"{card.id} {card.version}"[:64],
            series_description=f"SEG {card.id}"[:64],
        )
    _carry_deidentification(sources[0], seg)
    return seg


_DEID_KEYWORDS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


def _carry_deidentification(source: Dataset, seg: Dataset) -> None:
    """A SEG over de-identified sources says so too (highdicom copies only the patient attributes)."""
    if str(source.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    for keyword in _DEID_KEYWORDS:
        if keyword in source:
            seg[keyword] = copy.deepcopy(source[keyword])
