"""How much memory a job needs in a worker, estimated from its input's shape before it runs.

A worker's peak (VmHWM) for one job is, per model path, about

    process + model working set + input bytes + per-voxel bytes x voxels (+ reference and export terms)

- process: Python, numpy, torch and the service's modules imported (measured about 0.4 GiB);
- model working set: weights plus one window of activations; it does not grow with the input. MeshNet's
  network always runs on its own 256^3 grid, so its "window" is that grid (a CT fills it): two activations
  of its widest layer (brainchop's MeshNets have at most 30 channels), float32;
- input bytes: the scan as read (its stored dtype, e.g. int16), once per input channel;
- per voxel: what each path keeps on the input grid besides the input (label maps, nnU-Net's float32 copy
  where its own preprocessing runs, conform's and back-mapping's outputs), in bytes per input voxel,
  from ``bench/memory.py`` runs on 256^3 to 512x512x1500 CTs (README, Benchmarks) with some headroom;
- reference: the reference label map (1 byte a voxel as uint8) and the metrics' edge bit masks (at most
  1 byte a voxel for both sides together, `evaluation.surface`), plus numba and the compiled loops of the
  metrics (a fixed 160 MiB: evaluation imports numba at the first metric computed);
- DICOM SEG export: the labels read back and the SEG's frames of the structures found.

The estimate is deliberately a little above the measured peaks, so a job refused by it would also have
been killed, and a job let through fits. ``segserve.memory`` compares it with the worker's budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.card import ModelCard

GIB = 1 << 30
PROCESS_BYTES = GIB // 2
MESHNET_GRID_VOXELS = 256**3
MESHNET_MAX_CHANNELS = 30


@dataclass(frozen=True)
class _PathCost:
    """A model path's working set (bytes), its bytes per input voxel beyond the input array, and per voxel of
    the grid it resamples the scan to (TotalSegmentator's task spacing), where that is known."""

    working_set: int
    per_voxel: float
    per_model_voxel: float = 0.0  # bytes per voxel of the model's own grid, where it resamples the scan


# Bytes per input voxel beyond the input array, from bench/memory.py on 0.8 mm CTs (README):
# (peak - the path's working set) / voxels - the input's bytes, rounded up with headroom.
_PATHS: dict[str, _PathCost] = {
    # labels on the input grid (uint8) and the back-mapping's output; measured 1.7 at 512x512x400
    "meshnet": _PathCost(2 * MESHNET_MAX_CHANNELS * MESHNET_GRID_VOXELS * 4 + GIB // 4, 2.0),
    # nnU-Net with plane-wise preprocessing (every channel CT-normalised or not normalised:
    # models.nnunet.preprocess) and the export in slabs: the label map, nnU-Net's un-cropping and the
    # transposed copy; measured 0.0 (256^3), 1.1 (512x512x400) and 1.7 (512x512x1500) (2026-11-28)
    "nnunet": _PathCost(GIB, 3.0),
    # the same with a z-scored channel (ZScoreNormalization, models.nnunet.zscore): the statistics from planes
    # add nothing per voxel, but with use_mask_for_norm (not on the card, so always counted) the filled
    # non-zero mask is held (1 byte per cropped voxel) and scipy's binary_fill_holes needs about 3.3 more
    # while it runs (mask and fill measured 4.3 bytes a voxel on a 512x512x400 brain-shaped mask, 2026-11-28)
    "nnunet-zscore": _PathCost(GIB, 6.0),
    # nnU-Net's own preprocessing (other schemes: a custom normalisation class): its float32 copy
    # and float64 resampling at full resolution; measured 26 (256^3) and 32.6 (512x512x400) before the change
    "nnunet-own": _PathCost(GIB, 34.0),
    # TotalSegmentator's tasks (models/totalseg): on the input grid the labels mapped back and a contiguous
    # copy where the scan is not RAS (2); on the task's grid (per_model_voxel, voxels of the task's spacing:
    # the scan's voxels x voxel volume / task voxel volume) the resampled int32 scan, nnU-Net's float32
    # preprocessed copy, a part's and the merged labels, and nnU-Net's logits, finished a slab at a time
    # (models.nnunet.streaming: C x patch[0] planes, float16). Measured (bench.memory totalseg row, 0.8 mm
    # CTs, 1.5 mm task, stand-in weights with the real class counts, 2026-11-28): 5.9 (256^3) and 4.8
    # (512x512x400) bytes an input voxel beyond the input, i.e. at most 25 bytes a task voxel after the
    # input grid's 2; counted at 30. Before the streamed logits: 23.0 and 25.5 an input voxel.
    "totalseg": _PathCost(GIB, 2.0, per_model_voxel=30.0),
    # MONAI bundles with the resampling in slabs (models.bundle.slab_resample: Spacingd and the inverse in
    # Invertd; models.bundle.inversion fuses Invertd + argmax): measured 3.0 (512x512x400) and 3.7
    # (512x512x1500) for a made UNet bundle, 5.5 and 5.0 with a spleen-style Invertd (2026-11-28). Counted
    # at 12: a bundle that thresholds after Invertd (BraTS: sigmoid, Invertd, threshold; not fused) inverts
    # a float32 volume of its output channels at the input's size (3 channels: 12 bytes a voxel).
    # Resamplings that MONAI does whole (align_corners=True, spline modes, reflection padding) can take more.
    "bundle": _PathCost(GIB, 12.0),
}
# schemes models.nnunet.preprocess runs plane by plane with no per-voxel state (RGB: when in 0..255)
_PLANE_WISE_NORMALIZATION = (
    "CTNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
)
_ZSCORE = "ZScoreNormalization"
_REFERENCE_PER_VOXEL = 2.0  # the reference (uint8) + the metrics' edge bit masks (<= 1 byte a voxel)
_METRICS_BYTES = 160 << 20  # numba and the metrics' compiled loops, loaded at the first metrics (~135 MiB)
_SEG_PER_VOXEL = 2.0  # labels read back + frames of the structures found (uint8 / bit-packed)


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's estimated peak, in bytes, and its parts (for the messages)."""

    input_bytes: int
    model_bytes: int
    total_bytes: int

    def describe(self) -> str:
        """ "about 3.1 GiB (input 0.8 GiB, model 1.5 GiB)"."""
        return (
            f"about {self.total_bytes / GIB:.1f} GiB (input {self.input_bytes / GIB:.2f} GiB, "
            f"model {self.model_bytes / GIB:.1f} GiB)"
        )


def path_of(card: ModelCard) -> str:
    """The card's model path: "meshnet", "nnunet", "totalseg" or "bundle"."""
    if card.architecture == "meshnet" or card.params.get("weights_format") == "tfjs-layers":
        return "meshnet"
    weights_format = str(card.params.get("weights_format", ""))
    if weights_format.startswith("nnunet"):
        return "nnunet"
    if weights_format == "totalseg":
        return "totalseg"
    return "bundle"


def _cost_key(card: ModelCard) -> str:
    """The card's row of _PATHS: its path; for nnU-Net models "nnunet-zscore" where a channel is z-scored
    and every other one CT-normalised or unnormalised (plane-wise too), "nnunet-own" where nnU-Net's own
    preprocessing runs (another scheme, or no normalisation recorded)."""
    path = path_of(card)
    if path != "nnunet":
        return path
    schemes = card.input.get("normalization") if isinstance(card.input, dict) else None
    if not isinstance(schemes, list) or not schemes:
        return "nnunet-own"
    if all(s in _PLANE_WISE_NORMALIZATION for s in schemes):
        return "nnunet"
    if all(s in (*_PLANE_WISE_NORMALIZATION, _ZSCORE) for s in schemes):
        return "nnunet-zscore"
    return "nnunet-own"


def estimate_job_bytes(
    card: ModelCard,
    shape: Sequence[int],
    itemsize: int,
    *,
    channels: int = 1,
    reference: bool = False,
    dicom_seg: bool = False,
    spacing_mm: Sequence[float] | None = None,
) -> MemoryEstimate:
    """Estimated peak bytes of a worker running ``card`` on an input of ``shape`` (I, J, K) voxels.

    Args:
        itemsize: bytes per voxel of the input as read (2 for int16, 4 for float32).
        channels: number of input volumes (multi-channel models), each of ``shape``.
        reference: a reference label map is evaluated against.
        dicom_seg: the input is a DICOM series, so a DICOM SEG is exported too.
        spacing_mm: the voxel size along I, J, K in mm; for models that resample the scan to a spacing of
            their own (TotalSegmentator) it gives their grid's size. None (not read yet): that grid is not
            counted, which makes the estimate a lower bound.
    """
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be three positive sizes, got {tuple(shape)}")
    if itemsize < 1 or channels < 1:
        raise ValueError(f"itemsize and channels must be >= 1, got {itemsize} and {channels}")
    voxels = int(shape[0]) * int(shape[1]) * int(shape[2])
    cost = _PATHS[_cost_key(card)]
    weights = sum(int(f.size_bytes) for f in card.files)
    input_bytes = voxels * itemsize * channels
    per_voxel = cost.per_voxel * channels
    fixed = 0
    if reference:
        per_voxel += _REFERENCE_PER_VOXEL
        fixed += _METRICS_BYTES
    if dicom_seg:
        per_voxel += _SEG_PER_VOXEL
    model = cost.working_set + weights
    model_voxels = _model_voxels(card, shape, spacing_mm) if cost.per_model_voxel else 0.0
    total = PROCESS_BYTES + fixed + model + input_bytes + int(per_voxel * voxels)
    total += int(cost.per_model_voxel * model_voxels)
    return MemoryEstimate(input_bytes=input_bytes, model_bytes=model, total_bytes=total)


def _model_voxels(card: ModelCard, shape: Sequence[int], spacing_mm: Sequence[float] | None) -> float:
    """Voxels of the grid the model resamples the scan to (``card.params["resample_mm"]``, x y z mm, as
    TotalSegmentator's task spacing); 0 where the scan's spacing is not known yet."""
    target = card.params.get("resample_mm") if isinstance(card.params, dict) else None
    if spacing_mm is None or not isinstance(target, list) or len(target) != 3:
        return 0.0
    extent = 1.0
    for n, have, want in zip(shape, spacing_mm, target, strict=True):
        extent *= int(n) * float(have) / float(want)
    return extent


def check_job_memory(
    card: ModelCard,
    shape: Sequence[int],
    itemsize: int,
    budget: tuple[int, str] | None,
    *,
    channels: int = 1,
    reference: bool = False,
    dicom_seg: bool = False,
    spacing_mm: Sequence[float] | None = None,
) -> MemoryEstimate:
    """Estimate the job's peak and raise ``segserve.memory.InsufficientMemory`` when it is over ``budget``
    (``segserve.memory.worker_budget``); the message names the input's and the worker's sizes."""
    from segserve.memory import check_fits

    estimate = estimate_job_bytes(
        card,
        shape,
        itemsize,
        channels=channels,
        reference=reference,
        dicom_seg=dicom_seg,
        spacing_mm=spacing_mm,
    )
    grid = "x".join(str(int(n)) for n in shape)
    what = (
        f"model {card.id} on a {grid} scan ({estimate.input_bytes / (1 << 20):.0f} MiB as read"
        f"{f', {channels} channels' if channels > 1 else ''}) needs {estimate.describe()}"
    )
    check_fits(estimate.total_bytes, what, budget)
    return estimate
