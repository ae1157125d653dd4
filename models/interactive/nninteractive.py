"""nnInteractive (Isensee et al., 2025) as an interactive engine, through the package's own inference session.

Package: ``nninteractive==2.6.0`` (installed with ``--no-deps``: it declares nnunetv2>=2.7, which would move
the project's nnunetv2 2.6.0 and pull a torchvision that does not load beside the pinned torch; see the
Makefile). Weights: a model folder as published on Hugging Face (``MIC-DKFZ/nnInteractive``, licence
CC BY-NC-SA 4.0, non-commercial), put by a user with internet under the models directory::

    huggingface-cli download MIC-DKFZ/nnInteractive --include "nnInteractive_v1.0/*" \\
        --local-dir <models_dir>/nninteractive

giving ``<models_dir>/nninteractive/nnInteractive_v1.0/`` (plans.json, dataset.json,
inference_session_class.json, fold_0/checkpoint_final.pth). The engine takes the newest such folder.

Prompt mapping (voxel indices of the image array, as nnInteractive's are):
    Click(point, foreground)   ``add_point_interaction(point, include_interaction=foreground)``
    Box(lo, hi) (inclusive)    ``add_bbox_interaction([[lo, hi + 1] per axis], include_interaction=True)``:
                               half-open, as the package's boxes are; flat on one axis: its 2D box
    SliceMask(axis, index, m)  ``add_lasso_interaction(volume, include_interaction=True)``, the volume zero
                               but for ``m`` on that slice: a filled region on one slice is what
                               nnInteractive calls a lasso
Each prompt runs the session's prediction, in order, as a reviewer adding them one by one would (the
network sees its previous mask). A prompt set that extends the last one adds only the new prompts; any
other set (undo, edit) resets the session's interactions and replays them all, so the mask is a function
of the prompts alone (see :func:`seeded_numpy` for the one random step).
tests/models/test_interactive_nninteractive.py checks both against the session driven directly.

What the engine does beside the package: the network is built once per engine (one set of weights shared
by every prepared image's session, the package's ``initialize_from_loaded_artifacts``). With nnunetv2 2.6.0
the package's own loader cannot build it (its trainer stub calls nnU-Net >= 2.7's
``build_network_architecture(plans_manager, configuration_manager, ...)``), so :func:`load_artifacts` reads
the same files and builds the same network with nnU-Net 2.6's ``get_network_from_plans``; with nnU-Net >= 2.7
it uses the package's loader unchanged. The session's progress ``print`` output goes to this module's
logger at DEBUG level.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.card import ModelUnavailable
from models.interactive.prompts import Box, Click, Prompt, PromptError, SliceMask, check_prompts

log = logging.getLogger(__name__)

FOLDER = "nninteractive"  # under the models directory
MODEL_PREFIX = "nnInteractive_"
CHECKPOINT = "checkpoint_final.pth"
SESSION_FILES = ("inference_info.json", "inference_session_class.json")


def model_folders(models_dir: Path) -> list[Path]:
    """nnInteractive model folders under ``<models_dir>/nninteractive/``, oldest name first (torch-free)."""
    root = Path(models_dir) / FOLDER
    if not root.is_dir():
        return []
    return [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and p.name.startswith(MODEL_PREFIX) and not missing_files(p)
    ]


def missing_files(folder: Path) -> list[str]:
    """What a model folder lacks for the session to load it (empty: complete)."""
    missing = [n for n in ("plans.json", "dataset.json") if not (folder / n).is_file()]
    if not any((folder / n).is_file() for n in SESSION_FILES):
        missing.append(" or ".join(SESSION_FILES))
    if not list(folder.glob(f"fold_*/{CHECKPOINT}")):
        missing.append(f"fold_*/{CHECKPOINT}")
    return missing


def package_missing() -> str | None:
    """Why the nninteractive package cannot be used here (None: it imports)."""
    try:
        import nnInteractive.inference.inference_session  # noqa: F401
    except ImportError as exc:
        return (
            f"the nninteractive package is not installed ({exc}); install it with "
            "'pip install --no-deps nninteractive==2.6.0' (see the Makefile)"
        )
    return None


@contextlib.contextmanager
def _session_output() -> Iterator[None]:
    """The session's ``print`` progress lines to the log (DEBUG), not to the worker's stdout."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                log.debug("nnInteractive: %s", line)


def _new_session(device: Any, autozoom: bool = True) -> Any:
    import torch
    from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

    # torch_n_threads: the session sets the process's torch threads to it; keep the worker's setting
    return nnInteractiveInferenceSession(
        device=device,
        use_torch_compile=False,
        verbose=False,
        torch_n_threads=torch.get_num_threads(),
        do_autozoom=autozoom,
    )


def _package_builds_network() -> bool:
    """Whether nnU-Net's trainer takes the plans manager, as nnInteractive's trainer stub calls it (2.7+)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    first = next(iter(inspect.signature(nnUNetTrainer.build_network_architecture).parameters))
    return first == "plans_manager"


def load_artifacts(folder: Path, device: Any, fold: int | str | None = None) -> dict[str, Any]:
    """The session's loaded model (network, plans, metadata) as the package's
    ``_load_model_artifacts_from_disk`` returns it, for ``initialize_from_loaded_artifacts``."""
    if _package_builds_network():
        with _session_output():
            return dict(_new_session(device)._load_model_artifacts_from_disk(str(folder), fold, CHECKPOINT))
    import torch
    from nnInteractive.interaction.point import PointInteraction_stub
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with _session_output():
        session = _new_session(device)
    capability, radius, thickness, decay, pad_mode = session._load_capability_and_runtime_defaults(
        str(folder)
    )
    session._apply_capability(capability)  # gives num_interaction_channels, as in the package's loader
    dataset_json = _json(folder / "dataset.json")
    plans = _json(folder / "plans.json")
    manager = PlansManager(plans)
    folds = sorted(p.parent.name for p in folder.glob(f"fold_*/{CHECKPOINT}"))
    fold_folder = f"fold_{fold}" if fold is not None else folds[-1]
    # weights_only=False as the package loads it: nnU-Net checkpoints hold numpy values beside the tensors;
    # the folder is installed by an admin like any model
    checkpoint = torch.load(folder / fold_folder / CHECKPOINT, map_location=device, weights_only=False)
    config = manager.get_configuration(checkpoint["init_args"]["configuration"])
    channels = determine_num_input_channels(manager, config, dataset_json) + session.num_interaction_channels
    # nnInteractive networks always have 2 outputs (object, background), whatever the dataset's labels
    network = get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        channels,
        2,
        allow_init=True,
        deep_supervision=False,
    ).to(device)
    network.load_state_dict(checkpoint["network_weights"])
    return {
        "capability_content": capability,
        "point_interaction": PointInteraction_stub(radius, True),
        "preferred_scribble_thickness": thickness,
        "interaction_decay": decay,
        "pad_mode_data": pad_mode,
        "network": network,
        "plans_manager": manager,
        "configuration_manager": config,
        "dataset_json": dataset_json,
        "trainer_name": checkpoint["trainer_name"],
        "label_manager": manager.get_label_manager(dataset_json),
        "license": session._load_license(str(folder), plans, checkpoint),
    }


def _json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


@dataclass
class PreparedNNInteractive:
    """One image's nnInteractive session (its normalised image, interaction channels and mask buffer) and
    the prompts it has applied so far. ``nbytes``: image float32 + interaction channels float16 + mask."""

    session: Any
    target: np.ndarray
    shape: tuple[int, int, int]
    nbytes: int
    applied: list[Prompt] = field(default_factory=list)


def same_prompt(a: Prompt, b: Prompt) -> bool:
    """Prompt equality that compares a SliceMask's array by value."""
    if isinstance(a, SliceMask) and isinstance(b, SliceMask):
        return a.axis == b.axis and a.index == b.index and np.array_equal(a.mask, b.mask)
    return type(a) is type(b) and a == b


class NNInteractiveEngine:
    """nnInteractive's network (loaded once) and one session per prepared image.

    Not thread-safe: one ``segment`` at a time per prepared image (a session is stateful).
    """

    name = "nninteractive"

    def __init__(
        self, folder: Path, device: str = "cpu", fold: int | str | None = None, autozoom: bool = True
    ) -> None:
        """Load the model folder ``folder`` (see the module docstring). ``autozoom``: the session's
        ``do_autozoom`` (its default, on: when the mask reaches the patch border it predicts again on a
        zoomed-out patch, up to 4x, then refines patch by patch; off: one patch per prompt, much cheaper
        on a CPU).

        Raises:
            ModelUnavailable: the package is not installed, or the folder lacks a file (named).
        """
        import torch

        reason = package_missing()
        if reason is not None:
            raise ModelUnavailable(reason)
        folder = Path(folder)
        missing = missing_files(folder) if folder.is_dir() else [str(folder)]
        if missing:
            raise ModelUnavailable(f"nnInteractive model folder {folder}: missing {', '.join(missing)}")
        self.folder = folder
        self.autozoom = autozoom
        self.device = torch.device(device)
        self.artifacts = load_artifacts(folder, self.device, fold)

    @classmethod
    def from_models_dir(
        cls, models_dir: Path, device: str = "cpu", autozoom: bool = True
    ) -> NNInteractiveEngine:
        """The engine of the newest model folder under ``<models_dir>/nninteractive/``."""
        folders = model_folders(models_dir)
        if not folders:
            raise ModelUnavailable(
                f"no nnInteractive model under {Path(models_dir) / FOLDER} (a folder {MODEL_PREFIX}* with "
                "plans.json, dataset.json, its session metadata and fold_*/checkpoint_final.pth); "
                "see models/interactive/nninteractive.py for how to download it"
            )
        return cls(folders[-1], device, autozoom=autozoom)

    @property
    def license(self) -> str:
        """The model's licence as the package reads it (first line of its LICENSE file)."""
        return str(self.artifacts.get("license", ""))

    def prepare(
        self, image: np.ndarray, spacing_mm: tuple[float, float, float], affine: np.ndarray | None = None
    ) -> PreparedNNInteractive:
        """A session on ``image`` (I, J, K): the package normalises it (z-score over its nonzero region)
        in voxel space; ``spacing_mm`` is passed as the package's image property (which it does not use),
        the affine is not needed."""
        if image.ndim != 3:
            raise ValueError(f"image must be 3D (I, J, K), got shape {image.shape}")
        with _session_output():
            session = _new_session(self.device, self.autozoom)
            session.initialize_from_loaded_artifacts(self.artifacts)
            session.set_image(np.asarray(image)[None], {"spacing": [float(s) for s in spacing_mm]})
            target = np.zeros(image.shape, dtype=np.uint8)
            session.set_target_buffer(target)
        channels = int(session.num_interaction_channels)
        nbytes = int(image.size) * (4 + 2 * channels + 1)
        shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
        return PreparedNNInteractive(session, target, shape, nbytes)

    def segment(self, prepared: PreparedNNInteractive, prompts: Sequence[Prompt]) -> np.ndarray:
        """The mask (bool, (I, J, K)) after the prompts, in order. Raises PromptError for a prompt outside
        the image or one the model does not support (the package's message)."""
        check_prompts(prompts, prepared.shape)
        done = prepared.applied
        extends = len(done) <= len(prompts) and all(
            same_prompt(a, b) for a, b in zip(done, prompts, strict=False)
        )
        with _session_output():
            if not extends:
                prepared.session.reset_interactions()
                prepared.applied = []
            for n in range(len(prepared.applied), len(prompts)):
                try:
                    with seeded_numpy(n):
                        add_prompt(prepared.session, prompts[n], prepared.shape)
                except ValueError as exc:
                    # the session's own refusal (e.g. a 3D box for a model without 3D boxes): start over next
                    prepared.session.reset_interactions()
                    prepared.applied = []
                    raise PromptError(f"prompt {n}: {exc}") from None
                prepared.applied.append(prompts[n])
        return prepared.target > 0


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """numpy's global random state seeded with ``seed``, the caller's state restored afterwards.

    The session's refinement planner falls back to sampling patch centres with ``np.random`` when its
    greedy cover leaves voxels; seeding it per prompt (by the prompt's position) makes a replayed prompt
    set give the same mask as the prompts added one by one."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def add_prompt(session: Any, prompt: Prompt, shape: tuple[int, int, int]) -> None:
    """One prompt as the session's interaction (see the module docstring), with its prediction."""
    if isinstance(prompt, Click):
        session.add_point_interaction(
            tuple(int(p) for p in prompt.point), include_interaction=prompt.foreground
        )
    elif isinstance(prompt, Box):
        bbox = [[int(lo), int(hi) + 1] for lo, hi in zip(prompt.lo, prompt.hi, strict=True)]
        session.add_bbox_interaction(bbox, include_interaction=True)
    elif isinstance(prompt, SliceMask):
        volume = np.zeros(shape, dtype=np.uint8)
        index: list[Any] = [slice(None)] * 3
        index[prompt.axis] = prompt.index
        volume[tuple(index)] = np.asarray(prompt.mask, dtype=bool)
        session.add_lasso_interaction(volume, include_interaction=True)
    else:
        raise PromptError(f"nnInteractive cannot take a {type(prompt).__name__}")
