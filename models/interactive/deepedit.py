"""DeepEdit (MONAI) as an interactive engine: clicks become the bundle's guidance channels, run by the
bundle's own transforms, network and post-processing.

An installed MONAI bundle is a DeepEdit bundle when its inference pre-processing has MONAI's
``AddGuidanceFromPointsDeepEditd`` (the Zoo's ``spleen_deepedit_annotation``). Its inference config expects
the clicks as entries of the case dict, one per label name, in voxel indices of the *file as loaded*
(before any re-orientation): ``{"image": path, "spleen": [[i, j, k], ...], "background": [[i, j, k]]}``;
its own transforms (e.g. ``scripts.transforms.OrientationGuidanceMultipleLabelDeepEditd``, then
``AddGuidanceFromPointsDeepEditd``, ``Resized``, ``ResizeGuidanceMultipleLabelDeepEditd``,
``AddGuidanceSignalDeepEditd``) turn them into the network's guidance channels. This engine gives them
exactly that: foreground clicks under the engine's label name, background clicks under "background".

What the engine adds, and why:
  * ``prepare`` writes the image (its array and affine) to a temporary NIfTI and runs the bundle's
    pre-processing up to its first guidance transform (reading, channel axis, orientation, intensity
    scaling: nothing there depends on clicks), so a session pays for it once;
  * ``segment`` runs the remaining pre-processing with the clicks, one batch of one (MONAI's collation),
    the bundle's inferer on its network (no_grad; CUDA autocast where the evaluator has ``amp``, as MONAI's
    SupervisedEvaluator does) and the bundle's post-processing (softmax, Invertd back onto the input grid,
    argmax), as :func:`models.bundle.predictor.run_case` runs a job. The mask is ``labels == value`` of the
    engine's label. The result is voxel-for-voxel MONAI's own runner on the same file and clicks
    (tests/models/test_interactive_deepedit.py).

DeepEdit takes clicks only: a box or a painted slice is a :class:`PromptError`.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from models.bundle.build import IMAGE_KEY, Pipeline
from models.bundle.predictor import BundlePredictor, case_data
from models.card import ModelCard, ModelUnavailable
from models.interactive.prompts import Click, Prompt, PromptError, check_prompts

BACKGROUND = "background"  # the label name DeepEdit gives background clicks


@dataclass
class PreparedDeepEdit:
    """One image after the click-independent pre-processing.

    Attributes:
        data: the case dict after the steps before the first guidance transform (``image`` a MetaTensor
            (1, X, Y, Z) float32 carrying its applied operations, for Invertd at the end).
        shape: the input image's shape (I, J, K).
    """

    data: dict[str, Any]
    shape: tuple[int, int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of the pre-processed image held for the session."""
        image = self.data[IMAGE_KEY]
        return int(image.numel() * image.element_size()) if isinstance(image, torch.Tensor) else 0


def _steps(pipeline: Pipeline) -> list[Any]:
    from monai.transforms import Compose

    pre = pipeline.preprocessing
    return list(pre.flatten().transforms) if isinstance(pre, Compose) else [pre]


class DeepEditEngine:
    """A DeepEdit bundle's pipeline with its weights loaded, segmenting one label from clicks.

    Not thread-safe: one ``segment`` at a time (the bundle's transforms and network are shared).
    """

    def __init__(self, pipeline: Pipeline, model_id: str, label: str | None = None, device: str = "cpu"):
        """``pipeline``: built by models.bundle.build (weights loaded). ``label``: the label name the
        clicks are for (one of the bundle's ``label_names`` other than background; None: the only one).

        Raises:
            ModelUnavailable: the bundle is not a DeepEdit bundle, or ``label`` is not one of its labels.
        """
        from monai.apps.deepedit.transforms import AddGuidanceFromPointsDeepEditd

        steps = _steps(pipeline)
        reader = next((s for s in steps if isinstance(s, AddGuidanceFromPointsDeepEditd)), None)
        if reader is None:
            raise ModelUnavailable(
                f"model {model_id} is not a DeepEdit bundle: its preprocessing has no "
                "AddGuidanceFromPointsDeepEditd"
            )
        # the first step that reads clicks: everything before it is computed once in prepare()
        self._split = next(i for i, s in enumerate(steps) if "Guidance" in type(s).__name__)
        label_names = dict(reader.label_names or {})
        targets = [n for n in label_names if n != BACKGROUND]
        if label is None:
            if len(targets) != 1:
                raise ModelUnavailable(f"model {model_id} has labels {targets}: name the one to segment")
            label = targets[0]
        if label not in targets:
            raise ModelUnavailable(f"model {model_id} has no label {label!r}; its labels: {targets}")
        self.pipeline = pipeline
        self.model_id = model_id
        self.label = label
        self.label_value = int(label_names[label])
        self.device = torch.device(device)
        # the registry's name (models.interactive.model_engines): the label only where there is a choice
        self.name = f"deepedit:{model_id}" if len(targets) == 1 else f"deepedit:{model_id}:{label}"

    @classmethod
    def load(
        cls, card: ModelCard, models_dir: Path, label: str | None = None, device: str = "cpu"
    ) -> DeepEditEngine:
        """The engine of an installed bundle (files checked against its manifest; its code runs only if
        an admin trusted it at install, as for jobs: models.bundle.predictor.BundlePredictor.load).

        Raises:
            ModelUnavailable: files missing or changed, not trusted, not DeepEdit, unknown label.
        """
        predictor = BundlePredictor.load(card, models_dir, device)
        return cls(predictor.pipeline, card.id, label, device)

    @classmethod
    def from_folder(
        cls, directory: Path, label: str | None = None, device: str = "cpu", trusted: bool = False
    ) -> DeepEditEngine:
        """The engine of a bundle folder that is not installed (scripts, benches): built by
        models.bundle.build as install checks it; ``trusted``: its code ($ expressions, scripts/) may run.

        Raises:
            ModelUnavailable: the bundle cannot be built (the element named), is not DeepEdit, or has no
                such label.
        """
        from models.bundle.build import build
        from models.bundle.config import BundleError

        try:
            pipeline = build(Path(directory), device, trusted=trusted)
        except BundleError as exc:
            raise ModelUnavailable(f"bundle {Path(directory).name}: {exc}") from None
        return cls(pipeline, Path(directory).name, label, device)

    def prepare(
        self,
        image: np.ndarray,
        spacing_mm: tuple[float, float, float],
        affine: np.ndarray | None = None,
    ) -> PreparedDeepEdit:
        """The click-independent pre-processing of ``image`` (I, J, K).

        ``affine``: the image's voxel-to-RAS (mm) affine, as the scan's file gives it (the bundle
        re-orients to its own axcodes, e.g. RAS, as for a job). Without it the array is taken as already
        in RAS order with ``spacing_mm`` on its axes: ``diag(spacing_mm, 1)``.
        """
        if image.ndim != 3:
            raise ValueError(f"image must be 3D (I, J, K), got shape {image.shape}")
        if affine is None:
            affine = np.diag([*map(float, spacing_mm), 1.0])
        steps = _steps(self.pipeline)
        with tempfile.TemporaryDirectory(prefix="segserve-deepedit-") as tmp:
            path = Path(tmp) / "image.nii"
            nib.save(nib.Nifti1Image(np.asarray(image), np.asarray(affine, dtype=np.float64)), path)
            data: Any = case_data(self.pipeline.info.input_keys, [path])
            for step in steps[: self._split]:
                data = _apply(step, data)
        shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
        return PreparedDeepEdit(dict(data), shape)

    def clicks(self, prompts: Sequence[Prompt]) -> dict[str, list[list[int]]]:
        """The case-dict entries the bundle reads the clicks from: label name -> [[i, j, k], ...]."""
        out: dict[str, list[list[int]]] = {self.label: [], BACKGROUND: []}
        for n, prompt in enumerate(prompts):
            if not isinstance(prompt, Click):
                raise PromptError(f"prompt {n}: DeepEdit takes clicks only, not a {type(prompt).__name__}")
            out[self.label if prompt.foreground else BACKGROUND].append([int(p) for p in prompt.point])
        return out

    def segment(self, prepared: PreparedDeepEdit, prompts: Sequence[Prompt]) -> np.ndarray:
        """The mask (bool, (I, J, K)) of the engine's label for these clicks (none: DeepEdit's automatic
        mode). Raises PromptError for a prompt outside the image or one that is not a click."""
        check_prompts(prompts, prepared.shape)
        data: Any = {**copy.deepcopy(prepared.data), **self.clicks(prompts)}
        labels = self._labels(data)
        if labels.shape != prepared.shape:
            raise ValueError(
                f"model {self.model_id} gave labels of shape {labels.shape}, not {prepared.shape}"
            )
        return labels == self.label_value

    def _labels(self, data: dict[str, Any]) -> np.ndarray:
        from monai.data import decollate_batch, list_data_collate

        pipeline = self.pipeline
        for step in _steps(pipeline)[self._split :]:
            data = _apply(step, data)
        batch = list_data_collate([data])
        amp = torch.autocast("cuda") if pipeline.amp and self.device.type == "cuda" else nullcontext()
        pipeline.network.eval()
        with torch.no_grad(), amp:
            pred = pipeline.inferer(batch[IMAGE_KEY].to(self.device), pipeline.network)
        batch.update({"label": batch.get("label"), "pred": pred})
        item = decollate_batch(batch, detach=True)[0]
        with torch.no_grad():
            out = pipeline.postprocessing(item)
        labels = out["pred"]
        array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        return np.rint(array[0] if array.ndim == 4 else array).astype(np.int64)


def _apply(step: Any, data: Any) -> Any:
    from monai.transforms import apply_transform

    return apply_transform(step, data)
