"""Run a pulled TotalSegmentator task: its pre-processing, nnU-Net's predictor per part, its merge.

What TotalSegmentator does in ``nnunet.nnUNet_predict_image`` for its ``total`` / ``total_mr`` tasks, step
by step, with its own functions where it has them:

1. ``alignment.as_closest_canonical`` (RAS), here on the scan as stored (nibabel's flips and transposes:
   views), not on TotalSegmentator's float64 copy of it;
2. ``resampling.change_spacing`` to the task's spacing (1.5 mm, or 3 / 6 mm for --fast / --fastest;
   order 1, int32): the same zoom factors and values, computed in float64 slabs into int32
   (:mod:`models.totalseg.resampling`);
3. each part model through nnU-Net's predictor as ``nnunet.nnUNetv2_predict`` sets it up (Gaussian
   weighting, tile step 0.8 for these tasks, no test-time mirroring, fold 0), in memory with
   :class:`models.nnunet.predictor.NnunetRunner` on the resampled scan with the spacing SimpleITK reads
   from the file TotalSegmentator writes for it (its header's pixdim), instead of that file round trip;
4. the merge: each part's labels mapped by class name to the task's labels
   (``map_to_binary.class_map_5_parts`` / ``class_map_parts_mr``), later parts overwriting earlier ones
   where they are not background;
5. ``change_spacing`` back to the canonical grid (order 0, ``force_affine``: its zoom, on the uint8 labels
   into uint8) and ``undo_canonical`` (views; one contiguous uint8 copy where the scan is not RAS).

Not reproduced: TotalSegmentator's split of inputs over 512*512*900 resampled voxels into three z-slabs
(for the 1.5 mm task that is a scan over ~768 x 768 x 1350 mm), and its optional outputs (statistics,
previews, ``roi_subset``). We call these steps rather than ``python_api.totalsegmentator`` so that
progress is reported per tile, a cancelled job stops within one tile, no worker subprocesses are started
(nnU-Net's ``predict_from_files`` starts several) and nothing is sent over the network (TotalSegmentator's
usage statistics). The tests check that the labels equal ``python_api.totalsegmentator`` on the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from totalsegmentator import map_to_binary
from totalsegmentator.alignment import as_closest_canonical, undo_canonical

from models.card import Cancelled, ModelCard, ModelUnavailable, check_card
from models.cpu import FP32, CpuPath
from models.nnunet.predictor import NnunetRunner
from models.totalseg import tasks
from models.totalseg.resampling import (
    back_zoom,
    forward_zoom,
    resampled_affine,
    zoom_linear_int32,
    zoom_nearest_uint8,
)
from segserve.imaging.volume import Volume

# nnUNet_predict_image: step_size 0.8 for "total", "total_v3" and "total_mr", else 0.5.
STEP_SIZE = {"total": 0.8, "total_v3": 0.8, "total_mr": 0.8}


def load_part(card: ModelCard, models_dir: Path, part: dict[str, Any], device: str) -> NnunetRunner:
    """One part model, set up as TotalSegmentator's ``nnUNetv2_predict`` sets it up: Gaussian weighting, the
    task's tile step, no test-time mirroring (``tta=False``), the task's folds. nnU-Net's
    ``perform_everything_on_device`` is on for CUDA only (TotalSegmentator asks for it; nnU-Net turns it off
    on anything else)."""
    return NnunetRunner(
        tasks.model_folder(models_dir, card, part),
        tasks.folds(card),
        device,
        tile_step_size=STEP_SIZE.get(str(card.params["totalseg_task"]), 0.5),
        use_mirroring=False,
    )


def validate_staged(card: ModelCard, staged_models_dir: Path) -> None:
    """Install-time check for ``pull``, with the nnU-Net room's checks: each part folder is a valid trained
    model folder (``read_model_folder``) whose checkpoints unpickle with the restricted loader, whose network
    builds from its plans, takes the weights and runs one tiny forward pass (``validate_weights``); then
    nnU-Net's own predictor loads it as a job will. Raises ``NnunetError`` (an InstallError) naming the part.
    """
    from models.nnunet.folder import read_model_folder
    from models.nnunet.validate import validate_weights

    for part in tasks.parts(card):
        folder = tasks.model_folder(staged_models_dir, card, part)
        spec = read_model_folder(folder, folds=tuple(tasks.folds(card)))
        validate_weights(spec, trust_code=False)
        load_part(card, staged_models_dir, part, "cpu")


def _part_luts(card: ModelCard) -> list[np.ndarray]:
    """Per part, a lookup table part label -> task label, by class name (TotalSegmentator's merge)."""
    task = str(card.params["totalseg_task"])
    inverse = {name: value for value, name in map_to_binary.class_map[task].items()}
    luts = []
    for part in tasks.parts(card):
        part_labels = {int(k): str(v) for k, v in part["labels"].items()}
        lut = np.zeros(max(part_labels) + 1, dtype=np.uint8)
        for value, name in part_labels.items():
            lut[value] = inverse[name]
        luts.append(lut)
    return luts


def _scaled(report: Callable[[float], None], index: int, n_parts: int) -> Callable[[float], None]:
    """Part ``index``'s own progress (0..1) as a share of the whole task's."""
    return lambda fraction: report(min(1.0, (index + fraction) / n_parts))


class TotalSegPredictor:
    """A pulled TotalSegmentator task, loaded once (every part), then asked to segment many volumes."""

    def __init__(self, card: ModelCard, parts: list[NnunetRunner]) -> None:
        self.card = card
        self.parts = parts
        self.network = torch.nn.ModuleList([p.network for p in parts])
        self.luts = _part_luts(card)
        self.resample = tasks.resample_mm(card)

    @classmethod
    def load(
        cls, card: ModelCard, models_dir: Path, device: str = "cpu", cpu_path: CpuPath = FP32
    ) -> TotalSegPredictor:
        """Every part model of the task, verified and loaded. Always fp32 (``cpu_path`` is not used): the
        tasks' several part models are not calibrated for bf16 (models.calibration)."""
        reason = check_card(card, models_dir)
        if reason is not None:
            raise ModelUnavailable(reason)
        return cls(card, [load_part(card, models_dir, p, device) for p in tasks.parts(card)])

    def predict(
        self,
        volume: Volume | list[Volume],
        *,
        on_progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Labels (uint8, the task's class values) on ``volume``'s own grid, shape ``volume.shape``.

        Memory beyond the input: the resampled scan (int32, plus one float64 slab while it is made), each
        part's run on it (``NnunetRunner``), the merged labels (uint8) on the resampled grid, and the labels
        on the input's grid (uint8; one more uint8 copy only where the input is not RAS-ordered).

        Raises:
            Cancelled: ``is_cancelled()`` returned True (checked before each part and at every window).
        """
        vol = volume[0] if isinstance(volume, list) else volume
        # TotalSegmentator's float64 copy of the scan is not made: its values only feed scipy's zoom,
        # which converts the input's own values to double itself (models.totalseg.resampling).
        img_in_orig = nib.Nifti1Image(np.asarray(vol.array), np.asarray(vol.affine, dtype=np.float64))
        img_in = as_closest_canonical(img_in_orig)  # nibabel's flips and transposes: views of the scan
        canonical = np.asanyarray(img_in.dataobj)
        img_in_shape = canonical.shape
        zoom = forward_zoom(np.array(img_in.header.get_zooms())[:3], self.resample)
        if zoom is None:  # change_spacing returns the image itself (float64 values of the scan's)
            rsp_affine, rsp_header, rsp = img_in.affine, img_in.header, canonical
        else:
            rsp_affine = resampled_affine(img_in.affine, zoom)
            rsp = zoom_linear_int32(canonical, zoom)
            rsp_header = nib.Nifti1Image(rsp, rsp_affine).header  # as TotalSegmentator writes it for nnU-Net
        del canonical
        # nnU-Net reads TotalSegmentator's file with SimpleITK: spacing from the header's pixdim
        # (models.nnunet.geometry), the voxels in the file's order.
        resampled = Volume(array=rsp, affine=rsp_affine, source_format="nifti", header=rsp_header)
        combined = np.zeros(rsp.shape, dtype=np.uint8)
        n = len(self.parts)
        for index, (part, lut) in enumerate(zip(self.parts, self.luts, strict=True)):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("TotalSegmentator prediction cancelled")
            report = None if on_progress is None else _scaled(on_progress, index, n)
            seg = part.predict([resampled], on_progress=report, is_cancelled=is_cancelled)
            if seg.size and seg.max() >= len(lut):
                lut = np.pad(lut, (0, int(seg.max()) + 1 - len(lut)))
            mapped = lut[seg]
            del seg
            np.copyto(combined, mapped, where=mapped != 0)
            del mapped
        del resampled, rsp
        back = back_zoom(
            combined.shape, img_in_shape, np.array(nib.Nifti1Image(combined, rsp_affine).header.get_zooms())
        )
        labels = combined if back is None else zoom_nearest_uint8(combined, back)
        del combined
        # undo_canonical reorders by views; the result is made C-contiguous (a copy only if reordered)
        img_pred = undo_canonical(nib.Nifti1Image(labels, img_in.affine), img_in_orig)
        out = np.ascontiguousarray(np.asanyarray(img_pred.dataobj), dtype=np.uint8)
        if out.shape != vol.shape:
            raise RuntimeError(f"TotalSegmentator result has shape {out.shape}, the input {vol.shape}")
        return out
