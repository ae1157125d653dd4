"""MeshNet predictor: build a brainchop MeshNet once from its card, then segment many volumes.

Pipeline for one volume (shapes for a 256³ conformed grid):
    input (I, J, K) --conform--> float32 (256, 256, 256) on the 1 mm LIA grid (identity if already there)
    --crop to the non-zero box + margin (unless the card says no crop)--> (d, h, w) --normalise--> [0, 1]
    --axis order--> tensor (1, 1, d, h, w), channels-last in memory --MeshNet, layer by layer-->
    logits (1, C, d, h, w)
    --argmax--> labels (d, h, w) --paste into 256³, background 0--> --nearest neighbour--> (I, J, K).

Axis order: brainchop's TF.js models take the conformed array in nibabel's own index order, data[i, j, k]
(i: right->left, j: superior->inferior, k: posterior->anterior) as (D, H, W). Measured on subject-a with
model30chan18cls: order (0, 1, 2) gives mean Dice 0.785 over 17 structures against the FreeSurfer
reference, order (2, 1, 0) gives 0.083. Cards carry it as ``params["axis_order"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from models.calibration import precision_for
from models.card import Cancelled, ModelCard, ModelUnavailable, check_card
from models.cpu import FP32, CpuPath
from models.meshnet.conform import ConformedImage, conform, labels_to_source
from models.meshnet.network import MeshNet
from models.meshnet.preprocess import foreground_box, intensity_range, normalise, parse_normalisation
from models.meshnet.tfjs import TfjsFormatError, load_tfjs_model
from models.meshnet.twin import bf16_twin
from segserve.imaging.volume import Volume

__all__ = ["MEMORY_FORMAT", "MeshNetPredictor"]

ProgressCallback = Callable[[float], None]
CancelCheck = Callable[[], bool]

# MeshNet's weights and activations are kept channels-last (N, D, H, W, C in memory). Measured on 2 CPU
# cores, subject-a crop (1, 1, 137, 143, 186), brain-mri-structures: 11.1 s vs 16.1 s for the default
# layout, labels identical on every voxel (bench.inference prints both in the same run).
MEMORY_FORMAT = torch.channels_last_3d

# Share of the progress bar before / after the network (conform + normalise; argmax + resample back).
_PRE, _POST = 0.05, 0.05


class MeshNetPredictor:
    """A loaded model and its pre/post-processing. Not thread-safe: one ``predict`` at a time.

    ``precision``: "fp32", or "bf16" for a network made by :func:`models.meshnet.twin.bf16_twin` (what
    :meth:`load` picks where the CPU path allows it and the model's calibration passes).
    """

    def __init__(
        self, card: ModelCard, network: MeshNet, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        self.card = card
        self.precision = precision
        # Module.to takes memory_format (documented); its type stubs leave it out.
        self.network = network.to(memory_format=MEMORY_FORMAT)  # type: ignore[call-overload]
        self.device = torch.device(device)
        params = card.params
        self.normalisation = str(params.get("normalisation", "minmax"))
        kind, _, _ = parse_normalisation(self.normalisation)
        # Only quantile windows clip by default: "scale" keeps tissue brighter than its anchor above 1.
        self.clip = bool(params.get("clip_intensities", kind == "quantile"))
        order = params.get("axis_order", [0, 1, 2])
        self.axis_order = tuple(int(a) for a in order) if isinstance(order, list | tuple) else (0, 1, 2)
        if sorted(self.axis_order) != [0, 1, 2]:
            raise ValueError(f"axis_order must be a permutation of (0, 1, 2), got {order!r}")
        # None: run on the whole conformed grid. Needed by networks with instance normalisation, whose
        # statistics (and so whose output) depend on the field of view they are given.
        margin = params.get("crop_margin_voxels", 4)
        if margin is not None and (not isinstance(margin, int) or margin < 0):
            raise ValueError(f"crop_margin_voxels must be a non-negative int or None, got {margin!r}")
        self.crop_margin: int | None = margin

    @classmethod
    def load(
        cls, card: ModelCard, models_dir: Path, device: str = "cpu", cpu_path: CpuPath = FP32
    ) -> MeshNetPredictor:
        """Verify the card's files (size, sha256), read the weights and build the network.

        ``cpu_path``: the worker's CPU inference path; bf16 is used only where it allows it and the
        model's recorded calibration passes (:func:`models.calibration.use_bf16`), else fp32.

        Raises:
            ModelUnavailable: a file is missing or damaged, or the architecture is not supported.
        """
        reason = check_card(card, models_dir)
        if reason is not None:
            raise ModelUnavailable(reason)
        if card.architecture != "meshnet" or card.params.get("weights_format") != "tfjs-layers":
            raise ModelUnavailable(
                f"model {card.id}: architecture {card.architecture!r} with weights_format "
                f"{card.params.get('weights_format')!r} is not supported"
            )
        model_json = PurePosixPath(str(card.params["model_json"]))
        try:
            spec = load_tfjs_model(Path(models_dir) / model_json.parent, model_json.name)
        except TfjsFormatError as exc:
            raise ModelUnavailable(f"model {card.id}: {exc}") from exc
        if spec.num_classes != card.num_classes:
            raise ModelUnavailable(
                f"model {card.id}: network has {spec.num_classes} classes, card lists {card.num_classes}"
            )
        network = MeshNet.from_tfjs(spec).to(device)
        if precision_for(card, cpu_path) == "bf16":
            return cls(card, bf16_twin(network, blocks=cpu_path.space_to_batch), device, "bf16")
        return cls(card, network, device)

    def predict(
        self,
        volume: Volume,
        *,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> np.ndarray:
        """Segment ``volume``.

        Returns:
            integer labels with shape ``volume.shape`` on the input's own grid: uint8 for up to 256
            classes, else uint16.
        Raises:
            Cancelled: ``is_cancelled()`` returned True (checked before each layer).
        """
        report = on_progress or (lambda _fraction: None)
        stop = is_cancelled or (lambda: False)
        conformed, full, _box = self.conformed_labels(volume, report, stop)
        if stop():
            raise Cancelled()
        labels = labels_to_source(full, conformed)
        report(1.0)
        return labels

    def conformed_labels(
        self,
        volume: Volume,
        report: ProgressCallback | None = None,
        stop: CancelCheck | None = None,
    ) -> tuple[ConformedImage, np.ndarray, tuple[slice, slice, slice] | None]:
        """The labels on the conformed 256³ grid, before mapping back to the input's grid.

        Returns the conformed image, its labels (256, 256, 256) and the box the network labelled (None:
        no non-zero voxel, nothing run). The calibration compares fp32 and bf16 inside that box.
        """
        report = report or (lambda _fraction: None)
        stop = stop or (lambda: False)
        dtype = np.uint8 if self.network.num_classes <= 256 else np.uint16
        conformed = conform(volume)
        box = foreground_box(conformed.array, self.crop_margin or 0)
        if box is not None and self.crop_margin is None:
            box = (slice(None), slice(None), slice(None))
        # Fortran order, as NIfTI stores voxels: the result is written without a whole-volume transpose
        # (nibabel writes a C-ordered 256³ uint8 map about 0.1 s slower on 2 cores; same bytes).
        full = np.zeros(conformed.array.shape, dtype=dtype, order="F")
        if box is not None:
            low, high = intensity_range(conformed.array, self.normalisation)
            crop = normalise(conformed.array[box], low, high, clip=self.clip)
            report(_PRE)
            full[box] = self._segment_crop(crop, dtype, report, stop)
        return conformed, full, box

    def _segment_crop(
        self, crop: np.ndarray, dtype: type[np.integer], report: ProgressCallback, stop: CancelCheck
    ) -> np.ndarray:
        """Run the network on a normalised float32 crop (d, h, w); return its labels (d, h, w)."""
        inverse = tuple(int(a) for a in np.argsort(self.axis_order))
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(self.axis_order)))[None, None]
        del crop
        total = self.network.num_steps
        with torch.inference_mode():
            if self.device.type == "cuda":  # page-locked: the copy to the GPU runs without a staging copy
                x = x.pin_memory()
            x = x.to(self.device, memory_format=MEMORY_FORMAT, non_blocking=True)
            steps = self.network.forward_steps(x)
            del x
            activation: torch.Tensor | None = None
            for index in range(total):
                if stop():
                    steps.close()
                    raise Cancelled()
                activation = None  # let the previous activation go before the next one is built
                activation = next(steps)
                report(_PRE + (1.0 - _PRE - _POST) * (index + 1) / total)
            steps.close()
            if activation is None:
                raise RuntimeError(f"model {self.card.id} has no layers")
            labels = _argmax_channels(activation[0])  # the last activation is the logits (1, C, d, h, w)
            del activation
            return labels.astype(dtype).transpose(inverse)


def _argmax_channels(logits: torch.Tensor) -> np.ndarray:
    """The channel index of the largest logit per voxel: (C, d, h, w) -> int (d, h, w) numpy array.

    Ties go to the first channel either way (torch's and numpy's argmax rule). A channels-last fp32/fp64 CPU
    tensor is reduced by numpy over its contiguous last axis, which measured 0.14 s against torch's 0.23 s
    for subject-a's (18, 137, 143, 186) logits on 2 busy cores; other tensors use torch's argmax.
    """
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        last = logits.permute(1, 2, 3, 0)  # (d, h, w, C): a view, contiguous when channels-last
        if last.is_contiguous():
            return np.argmax(last.numpy(), axis=-1)
    return logits.argmax(dim=0).to("cpu").numpy()
