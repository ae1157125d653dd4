"""Run a pulled TotalSegmentator task: its pre-processing, nnU-Net's predictor per part, its merge.

What TotalSegmentator does in ``nnunet.nnUNet_predict_image`` for its ``total`` / ``total_mr`` tasks, step
by step, with its own functions where it has them:

1. the scan as a float64 NIfTI, then ``alignment.as_closest_canonical`` (RAS);
2. ``resampling.change_spacing`` to the task's spacing (1.5 mm, or 3 / 6 mm for --fast / --fastest;
   order 1, int32), written as TotalSegmentator writes it for nnU-Net;
3. each part model through nnU-Net's ``nnUNetPredictor`` exactly as ``nnunet.nnUNetv2_predict`` sets it up
   (Gaussian weighting, tile step 0.8 for these tasks, no test-time mirroring, fold 0), reading and writing
   with the reader/writer the plans name, as ``predict_from_files`` does;
4. the merge: each part's labels mapped by class name to the task's labels
   (``map_to_binary.class_map_5_parts`` / ``class_map_parts_mr``), later parts overwriting earlier ones
   where they are not background;
5. ``change_spacing`` back to the canonical grid (order 0, ``force_affine``) and ``undo_canonical``.

Not reproduced: TotalSegmentator's split of inputs over 512*512*900 resampled voxels into three z-slabs
(for the 1.5 mm task that is a scan over ~768 x 768 x 1350 mm), and its optional outputs (statistics,
previews, ``roi_subset``). We call these steps rather than ``python_api.totalsegmentator`` so that
progress is reported per tile, a cancelled job stops within one tile, no worker subprocesses are started
(nnU-Net's ``predict_from_files`` starts several) and nothing is sent over the network (TotalSegmentator's
usage statistics). The tests check that the labels equal ``python_api.totalsegmentator`` on the same weights.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from totalsegmentator import map_to_binary
from totalsegmentator.alignment import as_closest_canonical, undo_canonical
from totalsegmentator.resampling import change_spacing

from models.card import Cancelled, ModelCard, ModelUnavailable, check_card
from models.cpu import FP32, CpuPath
from models.totalseg import tasks
from segserve.imaging.volume import Volume

# nnUNet_predict_image: step_size 0.8 for "total", "total_v3" and "total_mr", else 0.5.
STEP_SIZE = {"total": 0.8, "total_v3": 0.8, "total_mr": 0.8}


class _PartPredictor(nnUNetPredictor):
    """nnU-Net's predictor with a per-tile hook: reports progress and, once cancelled, skips the network.

    Raising inside nnU-Net's tile loop would leave its producer thread blocked on a full queue, so a
    cancelled prediction runs the remaining tiles as zeros and raises :class:`Cancelled` afterwards.
    """

    on_tile: Callable[[int, int], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    _tiles_done = 0
    _tiles_total = 1
    _stop = False

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> Any:
        patch = self.configuration_manager.patch_size
        padded = [max(s, p) for s, p in zip(input_image.shape[1:], patch, strict=True)]
        self._tiles_total = max(1, len(self._internal_get_sliding_window_slicers(tuple(padded))))
        self._tiles_done = 0
        logits = super().predict_sliding_window_return_logits(input_image)
        if self._stop:
            raise Cancelled("TotalSegmentator prediction cancelled")
        return logits

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self._stop and self.is_cancelled is not None and self.is_cancelled():
            self._stop = True
        if self._stop:
            heads = self.label_manager.num_segmentation_heads
            return torch.zeros((x.shape[0], heads, *x.shape[2:]), dtype=x.dtype, device=x.device)
        out = super()._internal_maybe_mirror_and_predict(x)
        self._tiles_done += 1
        if self.on_tile is not None:
            self.on_tile(self._tiles_done, self._tiles_total)
        return out


def load_part(card: ModelCard, models_dir: Path, part: dict[str, Any], device: str) -> _PartPredictor:
    """One part model, set up as TotalSegmentator's ``nnUNetv2_predict`` sets it up."""
    folder = tasks.model_folder(models_dir, card, part)
    predictor = _PartPredictor(
        tile_step_size=STEP_SIZE.get(str(card.params["totalseg_task"]), 0.5),
        use_gaussian=True,
        use_mirroring=False,  # TotalSegmentator runs with tta=False
        # TotalSegmentator asks for True; nnU-Net turns it off (with a print) on anything but CUDA.
        perform_everything_on_device=torch.device(device).type == "cuda",
        device=torch.device(device),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(folder), use_folds=tasks.folds(card), checkpoint_name="checkpoint_final.pth"
    )
    return predictor


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


def _part_progress(report: Callable[[float], None], index: int, n_parts: int, done: int, total: int) -> None:
    report(min(1.0, (index + done / total) / n_parts))


class TotalSegPredictor:
    """A pulled TotalSegmentator task, loaded once (every part), then asked to segment many volumes."""

    def __init__(self, card: ModelCard, parts: list[_PartPredictor]) -> None:
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
        """Labels (uint8, the task's class values) on ``volume``'s own grid, shape ``volume.shape``."""
        vol = volume[0] if isinstance(volume, list) else volume
        img_in_orig = nib.Nifti1Image(np.asarray(vol.array), np.asarray(vol.affine, dtype=np.float64))
        img_in = nib.Nifti1Image(img_in_orig.get_fdata(), img_in_orig.affine)
        img_in = as_closest_canonical(img_in)
        img_in_shape = img_in.shape
        img_in_rsp = change_spacing(img_in, self.resample, order=1, dtype=np.int32, nr_cpus=1)
        n = len(self.parts)
        with tempfile.TemporaryDirectory(prefix="segserve_totalseg_") as tmp:
            tmp_dir = Path(tmp)
            nib.save(img_in_rsp, tmp_dir / "s01_0000.nii.gz")
            combined = np.zeros(img_in_rsp.shape, dtype=np.uint8)
            for index, (part, lut) in enumerate(zip(self.parts, self.luts, strict=True)):
                if is_cancelled is not None and is_cancelled():
                    raise Cancelled("TotalSegmentator prediction cancelled")
                part.is_cancelled = is_cancelled
                part.on_tile = None
                if on_progress is not None:
                    part.on_tile = functools.partial(_part_progress, on_progress, index, n)
                part._stop = False
                seg = self._predict_part(part, tmp_dir)
                if seg.size and seg.max() >= len(lut):
                    lut = np.pad(lut, (0, int(seg.max()) + 1 - len(lut)))
                mapped = lut[seg]
                np.copyto(combined, mapped, where=mapped != 0)
        img_pred = nib.Nifti1Image(combined, img_in_rsp.affine)
        img_pred = change_spacing(
            img_pred,
            self.resample,
            img_in_shape,
            order=0,
            dtype=np.uint8,
            nr_cpus=1,
            force_affine=img_in.affine,
        )
        img_pred = undo_canonical(img_pred, img_in_orig)
        labels: np.ndarray = np.asarray(img_pred.dataobj).astype(np.uint8)
        if labels.shape != vol.shape:
            raise RuntimeError(f"TotalSegmentator result has shape {labels.shape}, the input {vol.shape}")
        return labels

    @staticmethod
    def _predict_part(part: _PartPredictor, tmp_dir: Path) -> np.ndarray:
        """One part on the resampled image, read and written with the plans' reader as nnU-Net's
        ``predict_from_files`` does; returns its labels as TotalSegmentator reads them back (nibabel)."""
        reader = part.plans_manager.image_reader_writer_class()
        data, props = reader.read_images([str(tmp_dir / "s01_0000.nii.gz")])
        out = tmp_dir / "s01"
        part.predict_single_npy_array(data, props, None, str(out), False)
        seg = np.asanyarray(nib.load(tmp_dir / "s01.nii.gz").dataobj).astype(np.uint8)  # type: ignore[attr-defined]
        (tmp_dir / "s01.nii.gz").unlink()
        return seg
