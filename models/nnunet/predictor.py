"""NnunetPredictor: an installed nnU-Net v2 model behind the Predictor contract, run by nnU-Net's own code.

Pipeline for one case (C input channels on one grid):
    C x (I, J, K) --transpose to nnU-Net's (z, y, x), spacing reversed (models.nnunet.geometry)-->
    nnU-Net's steps of nnUNetPredictor.predict_single_npy_array: its preprocessing adapter (crop to
    non-zero, normalisation, resampling to the plans' spacing), predict_logits_from_preprocessed_data
    (sliding window with Gaussian weighting, test-time mirroring as the checkpoint allows, folds averaged),
    then the export (logits resampled to the original shape, softmax argmax or sigmoid regions, un-cropped)
    --> (z, y, x) --transpose--> (I, J, K)

The sliding window is nnU-Net's code, unchanged. The preprocessing is nnU-Net's adapter, or where that gives
the same array (:mod:`models.nnunet.preprocess`, tests compare every value) its steps computed plane by
plane; the export is nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape done in slabs of
output planes (or one channel at a time with nnU-Net's own resampling function, :mod:`models.nnunet.export`),
so the labels equal what ``nnUNetv2_predict`` writes for the same file and model folder. What we add: each
sliding-window step (each fold's) is reported as progress, and ``is_cancelled`` is checked before every step;
when it says stop, the remaining steps are skipped without running the network and
:class:`models.card.Cancelled` is raised once nnU-Net's window loop has ended (so its producer thread ends).

Memory: for models with DefaultPreprocessor, order-3 resampling (also split by axis for anisotropic
spacings) and CTNormalization, no normalisation or ZScoreNormalization (with or without use_mask_for_norm:
MR models) the preprocessing works from views of the scan, without nnU-Net's float32 and float64 copies of
the whole scan; other models take nnU-Net's own preprocessing (its float32 copy of the image, float64
resampling at full resolution). nnU-Net keeps the logits of every output
channel on the model's grid (on the CPU unless the device is CUDA). The export holds the label map and a
slab of planes per channel; ``bench/nnunet.py`` and ``bench/memory.py`` measure the peak.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from models.calibration import installed_records, precision_for
from models.card import Cancelled, ModelCard, ModelUnavailable, check_card
from models.cpu import FP32, CpuPath
from models.nnunet.export import export_order, logits_to_labels, streamed_export, uncrop
from models.nnunet.geometry import image_properties, labels_to_volume_grid, nnunet_input
from models.nnunet.preprocess import preprocess
from models.nnunet.streaming import stream_kind, stream_labels
from segserve.imaging.volume import Volume

# Share of the progress bar before the windows (preprocessing) and after them (export).
_PRE, _POST = 0.1, 0.1


class _Steps(list[Any]):
    """nnU-Net's list of window slicers; iterating stops early once its runner was told to stop."""

    def __init__(self, slicers: list[Any], runner: _SteppedPredictor) -> None:
        super().__init__(slicers)
        self._runner = runner

    def __iter__(self) -> Iterator[Any]:
        for item in list.__iter__(self):
            if self._runner.stopped:
                return
            yield item


class _SteppedPredictor(nnUNetPredictor):
    """nnU-Net's predictor, reporting each window step and skipping the rest once cancelled."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped = False
        self.on_step: Callable[[int, int], None] = lambda _done, _total: None
        self.is_cancelled: Callable[[], bool] = lambda: False
        self.done = 0
        self.total = 0

    def _internal_get_sliding_window_slicers(self, image_size: tuple[int, ...]) -> _Steps:
        steps = _Steps(super()._internal_get_sliding_window_slicers(image_size), self)
        self.total = len(steps) * len(self.list_of_parameters)
        return steps

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stopped and self.is_cancelled():
            self.stopped = True
        if self.stopped:  # at most the two windows already queued by nnU-Net's producer thread
            heads = self.label_manager.num_segmentation_heads
            return torch.zeros((x.shape[0], heads, *x.shape[2:]), device=x.device)
        out = super()._internal_maybe_mirror_and_predict(x)
        self.done += 1
        self.on_step(self.done, max(self.total, self.done))
        return out

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> Any:
        logits = super().predict_sliding_window_return_logits(input_image)
        if self.stopped:
            raise Cancelled()
        return logits


class NnunetRunner:
    """One nnU-Net trained model folder loaded for prediction (the folds chosen), reused for many cases.

    Public for other rooms that run nnU-Net models (TotalSegmentator's part models): build it on any
    trained model folder; :meth:`predict` gives labels on the first volume's grid.
    """

    def __init__(
        self,
        folder: Path,
        folds: Sequence[int | str] | None,
        device: str = "cpu",
        *,
        tile_step_size: float = 0.5,
        use_mirroring: bool = True,
    ) -> None:
        self.device = torch.device(device)
        # "bf16": the network's forward under CPU bf16 autocast (a calibrated model, models.calibration);
        # the preprocessing, nnU-Net's logit accumulation and the export are the same as in fp32.
        self.precision = "fp32"
        self.last_preprocessing = ""  # "planes" or "nnunet": which preprocessing the last case took
        self.last_logits = ""  # "slabs-same", "slabs-resampled" (models.nnunet.streaming) or "whole"
        self.predictor = _SteppedPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=use_mirroring,
            perform_everything_on_device=self.device.type == "cuda",
            device=self.device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        self.predictor.initialize_from_trained_model_folder(
            str(folder), tuple(folds) if folds is not None else None, "checkpoint_final.pth"
        )

    @property
    def network(self) -> torch.nn.Module:
        network: torch.nn.Module = self.predictor.network
        return network

    @property
    def nbytes(self) -> int:
        """Bytes of every loaded fold's weights."""
        return sum(
            t.numel() * t.element_size()
            for params in self.predictor.list_of_parameters
            for t in params.values()
            if isinstance(t, torch.Tensor)
        )

    def _preprocess(self, volumes: Sequence[Volume]) -> dict[str, Any]:
        """nnU-Net's preprocessed case ({"data": (C, *model grid) float32 tensor, "data_properties"}):
        plane by plane where that gives the same array (models.nnunet.preprocess), else nnU-Net's adapter."""
        runner = self.predictor
        properties = image_properties(volumes[0])
        data = preprocess(volumes, properties, runner.plans_manager, runner.configuration_manager)
        if data is not None:
            self.last_preprocessing = "planes"
            return {"data": torch.from_numpy(data), "data_properties": properties}
        self.last_preprocessing = "nnunet"
        image, properties = nnunet_input(volumes)
        adapter = PreprocessAdapterFromNpy(
            [image],
            [None],
            [properties],
            [None],
            runner.plans_manager,
            runner.dataset_json,
            runner.configuration_manager,
            num_threads_in_multithreaded=1,
            verbose=False,
        )
        del image
        case: dict[str, Any] = next(adapter)
        return case

    def predict(
        self,
        volumes: Sequence[Volume],
        *,
        on_progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Labels (I, J, K) on the first volume's grid, uint8 (uint16 past 254 labels), nnU-Net's values.

        Raises:
            Cancelled: ``is_cancelled()`` returned True (checked before preprocessing, every window, export).
        """
        report = on_progress or (lambda _fraction: None)
        stop = is_cancelled or (lambda: False)
        if stop():
            raise Cancelled()
        runner = self.predictor
        runner.stopped, runner.done, runner.total, runner.is_cancelled = False, 0, 0, stop
        runner.on_step = lambda done, total: report(_PRE + (1 - _PRE - _POST) * done / total)
        report(0.0)
        threads = torch.get_num_threads()
        try:
            case = self._preprocess(volumes)
            labels = self._labels(case)
        finally:
            torch.set_num_threads(threads)  # nnU-Net changes it and does not restore it on an exception
            runner.on_step, runner.is_cancelled = (lambda _d, _t: None), (lambda: False)
        out = labels_to_volume_grid(labels)
        report(1.0)
        return out

    def _labels(self, case: dict[str, Any]) -> np.ndarray:
        """nnU-Net's label map (its (z, y, x) order, uncropped) for a preprocessed case; ``case["data"]`` is
        dropped on the way. Logits finished a slab at a time where the export needs no resampling or resamples
        with order <= 1 (:mod:`models.nnunet.streaming`), else nnU-Net's whole-grid logits and the export."""
        runner = self.predictor
        properties = case["data_properties"]
        bf16 = self.precision == "bf16" and self.device.type == "cpu"
        target = tuple(int(n) for n in properties["shape_after_cropping_and_before_resampling"])
        order = export_order(runner.configuration_manager, runner.plans_manager, properties)
        kind = stream_kind(runner, case["data"], target, order)
        self.last_logits = f"slabs-{kind}" if kind else "whole"
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            if kind is not None and order is not None:
                data = case.pop("data")
                export = streamed_export(kind, runner.label_manager, tuple(data.shape[1:]), target, order)
                try:
                    stream_labels(runner, data, export.feed, lambda: runner.stopped)
                    del data
                    if runner.stopped or runner.is_cancelled():
                        raise Cancelled()
                    return uncrop(export.segmentation, runner.plans_manager, runner.label_manager, properties)
                finally:
                    export.close()
            logits = runner.predict_logits_from_preprocessed_data(case.pop("data")).cpu()
        if runner.stopped or runner.is_cancelled():
            raise Cancelled()
        return logits_to_labels(
            logits, runner.plans_manager, runner.configuration_manager, runner.label_manager, properties
        )


class NnunetPredictor:
    """An installed nnU-Net model (card ``weights_format`` "nnunet-v2"). Not thread-safe."""

    def __init__(self, card: ModelCard, runner: NnunetRunner) -> None:
        self.card = card
        self.runner = runner
        self.network = runner.network

    @classmethod
    def load(
        cls, card: ModelCard, models_dir: Path, device: str = "cpu", cpu_path: CpuPath = FP32
    ) -> NnunetPredictor:
        """Verify the installed files against the manifest and load the card's folds with nnU-Net.
        ``cpu_path``: the worker's CPU path; bf16 only where it allows it and the model's calibration in
        ``models_dir`` passes (:func:`models.calibration.use_bf16`), else fp32.

        Raises:
            ModelUnavailable: a file is missing or changed, or nnU-Net cannot load the model.
        """
        reason = check_card(card, models_dir)
        if reason is not None:
            raise ModelUnavailable(reason)
        folds = card.params.get("folds")
        try:
            runner = NnunetRunner(
                Path(models_dir) / str(card.params["model_dir"]),
                [f if f == "all" else int(f) for f in folds] if isinstance(folds, list) else None,
                device,
            )
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise ModelUnavailable(f"model {card.id}: nnU-Net cannot load it: {exc}") from exc
        runner.precision = precision_for(card, cpu_path, installed_records(models_dir))
        return cls(card, runner)

    @property
    def nbytes(self) -> int:
        return self.runner.nbytes

    @property
    def precision(self) -> str:
        """ "fp32", or "bf16": the forward under CPU bf16 autocast (see :class:`NnunetRunner`)."""
        return self.runner.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.runner.precision = value

    def predict(
        self,
        volume: Volume | Sequence[Volume],
        *,
        on_progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Segment one case: the scan, or one volume per input channel in the card's ``input["channels"]``
        order, all on the first one's grid (the caller checks that). Labels on that grid.

        Raises:
            ValueError: the number of volumes is not the model's number of input channels.
            Cancelled: the caller asked to stop.
        """
        volumes = [volume] if isinstance(volume, Volume) else list(volume)
        channels = self.card.input.get("channels")
        expected = len(channels) if isinstance(channels, list) else 1
        if len(volumes) != expected:
            raise ValueError(
                f"model {self.card.id} takes {expected} input channels, got {len(volumes)} volumes"
            )
        return self.runner.predict(volumes, on_progress=on_progress, is_cancelled=is_cancelled)
