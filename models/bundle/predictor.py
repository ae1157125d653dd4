"""BundlePredictor: one installed MONAI bundle behind the Predictor contract, run as MONAI runs it.

One case, as MONAI's ``SupervisedEvaluator`` runs one batch of the bundle's own inference config:
    the job's volumes -> temporary NIfTI files (array and affine as given; one per input channel, in the
    order of ``channel_def``, read by the bundle's own LoadImaged as a list, as in its datalist)
    -> the bundle's preprocessing (MONAI Compose from the config; its Spacingd resamples in slabs with
       MONAI's values, models.bundle.slab_resample) -> collate to a batch of one
    -> the bundle's inferer (e.g. MONAI's SlidingWindowInferer: its windows, blending mode, padding) on the
       network, or, where that is exact, the memory-bounded label path (models.bundle.stitching), under
       ``torch.no_grad`` (and CUDA autocast where the evaluator has ``amp`` and the device
       is a GPU); progress is reported and cancellation checked between windows
    -> decollate -> the bundle's postprocessing without SaveImaged (Activationsd, Invertd back onto the
       input grid, AsDiscreted, Lambdad, KeepLargestConnectedComponentd, ... exactly as configured; an
       Invertd followed by the argmax takes it slab by slab, models.bundle.inversion)
    -> the ``pred`` label map, channel axis dropped: the bundle's own output values (e.g. BraTS 1/2/4).
A bundle with an evaluator of its own (VISTA-3D: ``scripts.evaluator.Vista3dEvaluator`` makes the
everything-prompt and calls its inferer with it) is run by that evaluator instead, over a loader of the
one case (:func:`run_evaluator`); its labels are its metadata's ``channel_def`` values.
Label names come from the install-time probe (models.bundle.build.probe_labels) kept in the manifest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from models.bundle.build import IMAGE_KEY, Pipeline, build, post_transforms
from models.bundle.inversion import fuse_invert_argmax
from models.bundle.padding import infer_prepadded
from models.bundle.regrid import labels_on_grid, onto_grid, to_label_map
from models.bundle.stitching import label_steps, stitched_pred
from models.calibration import installed_records, precision_for
from models.card import Cancelled, ModelCard, ModelUnavailable, check_card
from models.cpu import FP32, CpuPath
from models.installed import InstallError, read_manifest
from segserve.imaging.volume import Volume

# Share of the progress bar before / after the windows (pre-processing; post-processing).
_PRE, _POST = 0.05, 0.05

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]


def window_count(inferer: Any, spatial: Sequence[int]) -> int | None:
    """Windows MONAI's SlidingWindowInferer visits on an image of ``spatial`` size (None for others)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers import SlidingWindowInferer
    from monai.inferers.utils import _get_scan_interval
    from monai.utils import ensure_tuple_rep, fall_back_tuple

    if not isinstance(inferer, SlidingWindowInferer):
        return None
    roi = fall_back_tuple(inferer.roi_size, tuple(spatial))
    padded = tuple(max(int(s), int(r)) for s, r in zip(spatial, roi, strict=True))
    interval = _get_scan_interval(padded, roi, len(padded), ensure_tuple_rep(inferer.overlap, len(padded)))
    return len(dense_patch_slices(padded, roi, interval))


class _Watched(nn.Module):
    """The network as the inferer calls it: checks cancellation before and reports progress after each
    batch of windows. The network is its ``module`` (as DataParallel holds it), which is where bundle code
    such as VISTA-3D's inferer looks for the network's own attributes."""

    def __init__(
        self, network: nn.Module, total: int | None, report: ProgressFn, is_cancelled: CancelFn | None
    ) -> None:
        super().__init__()
        self.module = network
        self.total, self.report, self.is_cancelled = total, report, is_cancelled
        self.done = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.is_cancelled is not None and self.is_cancelled():
            raise Cancelled()
        out = self.module(x, *args, **kwargs)
        self.done += int(x.shape[0])
        if self.total:
            self.report(_PRE + (1.0 - _PRE - _POST) * min(self.done / self.total, 1.0))
        return out


def write_inputs(volumes: Sequence[Volume], directory: Path) -> list[Path]:
    """Each volume as an uncompressed NIfTI (its own dtype and affine) for the bundle's LoadImaged."""
    paths = []
    for index, volume in enumerate(volumes):
        path = Path(directory) / f"channel{index}.nii"
        nib.save(nib.Nifti1Image(np.asarray(volume.array), np.asarray(volume.affine, dtype=np.float64)), path)
        paths.append(path)
    return paths


def case_data(keys: Sequence[str], paths: Sequence[Path]) -> dict[str, Any]:
    """The case dict the bundle's LoadImaged reads, as its datalist would give it.

    Several keys: one volume per key (e.g. contrast phases), in ``keys`` order without ``label``. A
    ``label`` key (a reference segmentation that only LoadImaged reads: checked at install,
    models.bundle.trust.label_readers) is given the first volume's file as a stand-in, so the case loads
    as MONAI's runner loads it and the prediction, which never reads it, is the same. One key: a file, or
    the list of channel files (stacked by LoadImaged, as BraTS's datalist).
    """
    if len(keys) > 1:
        channels = [key for key in keys if key != "label"]
        data = {key: str(path) for key, path in zip(channels, paths, strict=True)}
        if "label" in keys:
            data["label"] = str(paths[0])
        return data
    return {keys[0]: str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]}


def run_evaluator(
    pipeline: Pipeline, paths: Sequence[Path], report: ProgressFn, is_cancelled: CancelFn | None
) -> torch.Tensor:
    """The ``pred`` of the bundle's own evaluator (``pipeline.evaluator``) for one case, as MONAI's runner
    gets it: the evaluator runs one epoch over a loader of this one case (the bundle's preprocessing, batch
    of one, MONAI's collation), its iteration builds the prompts and calls its inferer, its postprocessing
    (SaveImaged left out) runs on the decollated output. The network is watched for cancellation."""
    from monai.data import DataLoader, Dataset

    evaluator = pipeline.evaluator
    dataset = Dataset([case_data(pipeline.info.input_keys, paths)], transform=pipeline.preprocessing)
    evaluator.data_loader = DataLoader(dataset, batch_size=1, num_workers=0)
    evaluator.state.epoch_length = 1
    evaluator.network = _Watched(pipeline.network, None, report, is_cancelled)
    try:
        evaluator.run()
        output = evaluator.state.output
    finally:
        evaluator.network = pipeline.network
        evaluator.data_loader = None
        evaluator.state.output = evaluator.state.batch = None
    item = output[0] if isinstance(output, list) else output
    if not isinstance(item, dict) or "pred" not in item:
        raise ValueError(f"the bundle's evaluator gave {type(item).__name__} without a 'pred'")
    pred = item["pred"]
    return pred.detach().cpu() if isinstance(pred, torch.Tensor) else torch.as_tensor(pred)


def run_case(
    pipeline: Pipeline,
    paths: Sequence[Path],
    device: torch.device,
    report: ProgressFn | None = None,
    is_cancelled: CancelFn | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """The bundle's ``pred`` for one case of input files, after its postprocessing (SaveImaged left out).
    ``precision`` "bf16" runs the network's forward under CPU bf16 autocast (a calibrated model on a CPU
    with native bf16, see models.calibration); its output is cast back to float32 before postprocessing."""
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import apply_transform

    report = report or (lambda _fraction: None)
    if pipeline.evaluator is not None:
        pipeline.last_path = "evaluator"
        return run_evaluator(pipeline, paths, report, is_cancelled)
    data = pipeline.preprocessing(case_data(pipeline.info.input_keys, paths))
    report(_PRE)
    batch = list_data_collate([data])
    del data  # the batch holds its own copy: one pre-processed image less during the forward pass
    batch[IMAGE_KEY] = batch[IMAGE_KEY].to(device)
    image = batch[IMAGE_KEY]
    amp: Any = nullcontext()
    if pipeline.amp and device.type == "cuda":
        amp = torch.autocast("cuda")
    elif precision == "bf16" and device.type == "cpu":
        amp = torch.autocast("cpu", dtype=torch.bfloat16)  # the forward only (models.calibration)
    pipeline.network.eval()
    replaced = label_steps(pipeline) if pipeline.label_path and pipeline.out_channels else None
    pred = None
    if replaced is not None and pipeline.out_channels is not None:

        def on_window(done: int, total: int) -> None:
            report(_PRE + (1.0 - _PRE - _POST) * done / total)

        with torch.no_grad(), amp:
            pred = stitched_pred(pipeline, image, pipeline.out_channels, device, on_window, is_cancelled)
    pipeline.last_path = "labels" if pred is not None else "monai"
    if pred is None:
        replaced = 0
        total = window_count(pipeline.inferer, image.shape[2:])
        network = _Watched(pipeline.network, total, report, is_cancelled)
        del image  # from here on the batch holds the only reference (infer_prepadded replaces it)
        with torch.no_grad(), amp:
            pred = infer_prepadded(pipeline.inferer, batch, IMAGE_KEY, network)
            if pred is None:
                pred = pipeline.inferer(batch[IMAGE_KEY], network)
    if is_cancelled is not None and is_cancelled():
        raise Cancelled()
    if isinstance(pred, torch.Tensor) and pred.dtype == torch.bfloat16:
        pred = pred.float()
    batch.update({"label": batch.get("label"), "pred": pred})
    item = decollate_batch(batch, detach=True)[0]
    steps = post_transforms(pipeline)[replaced or 0 :]
    fused = fuse_invert_argmax(steps)  # Invertd + argmax in slabs (models.bundle.inversion)
    with torch.no_grad():
        if replaced or len(fused) < len(steps):
            for step in fused:
                item = apply_transform(step, item)
            out = item
        else:
            out = pipeline.postprocessing(item)
    return (
        out["pred"].detach().cpu() if isinstance(out["pred"], torch.Tensor) else torch.as_tensor(out["pred"])
    )


def tiny_case(pipeline: Pipeline, device: str = "cpu") -> tuple[int, ...]:
    """Install-time check of a bundle that runs its own evaluator (no network-only forward pass fits its
    prompts): one whole case on a small synthetic volume (24 voxels per axis at the bundle's spacing or
    1.5 mm, a positive intensity ramp so that foreground crops keep it). Returns the label map's shape.

    Raises:
        BundleError: any step fails or the evaluator does not give one label map on the input's grid.
    """
    from models.bundle.config import BundleError

    spacing = pipeline.info.spacing_mm or (1.5, 1.5, 1.5)
    ramp = np.linspace(1.0, 1000.0, 24**3, dtype=np.float32).reshape(24, 24, 24)
    volume = Volume(ramp, np.diag([*spacing, 1.0]), "nifti")
    # A window of at most 32 per axis for this check (VISTA-3D's 128^3 window would cost a minute on a CPU
    # for a 24^3 case): the check is about building, weights and wiring; jobs use the configured roi.
    inferer = getattr(pipeline.evaluator, "inferer", None)
    roi = getattr(inferer, "roi_size", None)
    small = [min(int(r), 32) for r in roi] if isinstance(roi, list | tuple) else None
    with tempfile.TemporaryDirectory(prefix="segserve-check-") as tmp:
        paths = write_inputs([volume] * len(pipeline.info.input_channels), Path(tmp))
        try:
            if small is not None:
                inferer.roi_size = small  # type: ignore[union-attr]
            pred = onto_grid(run_case(pipeline, paths, torch.device(device)), volume)
            labels = to_label_map(pred, volume.shape, pipeline.info.name)
        except Exception as exc:  # the bundle's own evaluator, inferer and transforms raise anything
            raise BundleError(
                f"the bundle's evaluator fails on a {volume.shape} case: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        finally:
            if small is not None:
                inferer.roi_size = roi  # type: ignore[union-attr]
    return tuple(labels.shape)


class BundlePredictor:
    """A bundle's MONAI pipeline with its weights loaded. Not thread-safe: one ``predict`` at a time."""

    def __init__(
        self, card: ModelCard, pipeline: Pipeline, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        self.card = card
        self.pipeline = pipeline
        self.network = pipeline.network
        self.device = torch.device(device)
        self.precision = precision  # "bf16": the forward under CPU bf16 autocast (models.calibration)

    @classmethod
    def load(
        cls, card: ModelCard, models_dir: Path, device: str = "cpu", cpu_path: CpuPath = FP32
    ) -> BundlePredictor:
        """Verify the bundle's files against its manifest and build its MONAI pipeline.

        Code in the bundle runs only when its manifest records that an admin trusted it at install.
        ``cpu_path``: the worker's CPU path; bf16 only where it allows it and the model's calibration in
        ``models_dir`` passes (:func:`models.calibration.use_bf16`), else fp32.

        Raises:
            ModelUnavailable: a file is missing or changed, or the bundle cannot be built (the reason).
        """
        reason = check_card(card, models_dir)
        if reason is not None:
            raise ModelUnavailable(reason)
        directory = Path(models_dir) / str(card.params["bundle_dir"])
        try:
            manifest = read_manifest(directory)
            pipeline = build(directory, device, trusted=bool(manifest.get("trusted_code")))
            out_channels = manifest.get("out_channels")
            pipeline.out_channels = out_channels if isinstance(out_channels, int) else None
        except (InstallError, OSError, ValueError, KeyError) as exc:
            raise ModelUnavailable(f"model {card.id}: {exc}") from exc
        return cls(card, pipeline, device, precision_for(card, cpu_path, installed_records(models_dir)))

    @property
    def input_channels(self) -> tuple[str, ...]:
        return self.pipeline.info.input_channels

    @property
    def nbytes(self) -> int:
        """Bytes held by the network's parameters and buffers."""
        tensors = [*self.network.parameters(), *self.network.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def predict(
        self,
        volume: Volume | Sequence[Volume],
        *,
        on_progress: ProgressFn | None = None,
        is_cancelled: CancelFn | None = None,
    ) -> np.ndarray:
        """Segment one case.

        Args:
            volume: the scan, or one volume per input channel in ``input_channels`` order, all on the grid
                of the first (the caller checks that; see segserve.scans.readers).
        Returns:
            labels with the first volume's shape, on its grid: the bundle's own output values, uint8
            (uint16 above 255).
        Raises:
            ValueError: the number of volumes is not the bundle's number of input channels.
            Cancelled: ``is_cancelled()`` returned True (checked between batches of windows).
        """
        report = on_progress or (lambda _fraction: None)
        volumes = [volume] if isinstance(volume, Volume) else list(volume)
        channels = self.input_channels
        if len(volumes) != len(channels):
            raise ValueError(
                f"model {self.card.id} takes {len(channels)} input channels "
                f"({', '.join(channels)}), got {len(volumes)} volumes"
            )
        with tempfile.TemporaryDirectory(prefix="segserve-case-") as tmp:
            paths = write_inputs(volumes, Path(tmp))
            pred = run_case(self.pipeline, paths, self.device, report, is_cancelled, self.precision)
        labels = labels_on_grid(pred, volumes[0], self.card.id)  # onto_grid + to_label_map, in slabs
        report(1.0)
        return labels
