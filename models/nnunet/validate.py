"""Install-time check of an nnU-Net model's weights (imports torch and nnunetv2; only the installer calls it).

For every chosen fold: the checkpoint is unpickled with torch's restricted loader (``weights_only=True``,
numpy scalars and dtypes allowed, as nnU-Net's trainer logs hold them), so installing a checkpoint never runs
code from it unless the admin trusts the model's code; it must hold ``network_weights``, ``trainer_name`` and
``init_args["configuration"]`` equal to the folder's. The network is then built from the plans the way
nnU-Net's predictor builds it (its trainer class's ``build_network_architecture``), every fold's weights are
loaded strictly, and one forward pass runs on the smallest input the network takes (one voxel per stride
product along each axis). Once installed, the manifest pins these exact bytes; nnU-Net's own loader, which
unpickles freely, only ever reads them after that check.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from models.nnunet.folder import CHECKPOINT, NnunetError, NnunetSpec


def _safe_globals() -> list[Any]:
    scalar = getattr(np, "_core", np.core).multiarray.scalar  # numpy 2 moved it under _core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [scalar, np.dtype, *dtypes]


def load_checkpoint(path: Path, trust_code: bool) -> dict[str, Any]:
    """A checkpoint's dict, unpickled with torch's restricted loader unless ``trust_code``."""
    import torch

    try:
        if trust_code:
            data = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_safe_globals()):
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign pickle
        hint = "" if trust_code else " (if it holds Python objects you trust, install with --trust-code)"
        raise NnunetError(
            f"{path.parent.name}/{path.name} cannot be loaded as an nnU-Net checkpoint: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}{hint}"
        ) from None
    if not isinstance(data, dict):
        raise NnunetError(
            f"{path.parent.name}/{path.name} holds a {type(data).__name__}, not a checkpoint dict"
        )
    return data


def _trainer_class(name: str) -> Any:
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    root = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    found = recursive_find_python_class(str(root), name, "nnunetv2.training.nnUNetTrainer")
    if found is None:
        raise NnunetError(
            f"checkpoint trainer_name {name!r} is not a trainer of the installed nnunetv2: nnU-Net builds "
            "the network through it at prediction time"
        )
    return found


def build_network(spec: NnunetSpec, trainer_name: str) -> tuple[Any, int, Any]:
    """(network, output channels, configuration manager) of ``spec``'s configuration, the network untrained
    and built as nnU-Net's predictor builds it."""
    import json

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((spec.directory / "plans.json").read_text(encoding="utf-8"))
    dataset = json.loads((spec.directory / "dataset.json").read_text(encoding="utf-8"))
    try:
        manager = PlansManager(plans)
        config = manager.get_configuration(spec.configuration)
        heads = manager.get_label_manager(dataset).num_segmentation_heads
        return (
            _trainer_class(trainer_name).build_network_architecture(
                config.network_arch_class_name,
                config.network_arch_init_kwargs,
                config.network_arch_init_kwargs_req_import,
                determine_num_input_channels(manager, config, dataset),
                heads,
                enable_deep_supervision=False,
            ),
            heads,
            config,
        )
    except NnunetError:
        raise
    except Exception as exc:  # nnU-Net's builders raise whatever the plans' bad values make them raise
        raise NnunetError(
            f"plans.json: the network of configuration {spec.configuration!r} cannot be built: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _smallest_input(config: Any, channels: int) -> tuple[int, ...]:
    """(1, C, *size): each size twice the product of the strides along that axis (a valid U-Net input that
    leaves instance normalisation more than one voxel at the bottom)."""
    strides = config.network_arch_init_kwargs.get("strides")
    dims = len(config.patch_size)
    if not isinstance(strides, list | tuple) or not strides:
        return (1, channels, *config.patch_size)
    sizes = []
    for axis in range(dims):
        sizes.append(2 * math.prod(int(s[axis] if isinstance(s, list | tuple) else s) for s in strides))
    return (1, channels, *sizes)


def validate_weights(spec: NnunetSpec, trust_code: bool = False) -> dict[str, Any]:
    """Check every chosen fold of ``spec`` (see the module docstring).

    Returns:
        {"trainer_name": ..., "mirroring_axes": [...] or None}
    Raises:
        NnunetError: naming the fold's file and what is wrong.
    """
    import torch

    checkpoints = {}
    for fold in spec.folds:
        path = spec.directory / f"fold_{fold}" / CHECKPOINT
        data = load_checkpoint(path, trust_code)
        where = f"fold_{fold}/{CHECKPOINT}"
        missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in data]
        if missing:
            raise NnunetError(f"{where} lacks {missing}: not an nnU-Net v2 checkpoint")
        configuration = (data["init_args"] or {}).get("configuration")
        if configuration != spec.configuration:
            raise NnunetError(
                f"{where}: trained for configuration {configuration!r}, "
                f"but the folder is {spec.configuration!r}"
            )
        checkpoints[fold] = data
    first = checkpoints[spec.folds[0]]
    trainer_name = str(first["trainer_name"])
    network, heads, config = build_network(spec, trainer_name)
    shape = _smallest_input(config, len(spec.channels))
    for fold, data in checkpoints.items():
        try:
            network.load_state_dict(data["network_weights"])
        except Exception as exc:  # a state dict of another shape or another network
            raise NnunetError(
                f"fold_{fold}/{CHECKPOINT}: its weights do not fit the network of plans.json: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
        network.eval()
        try:
            with torch.inference_mode():
                out = network(torch.zeros(shape))
        except Exception as exc:  # whatever the network's own code raises
            raise NnunetError(
                f"fold_{fold}/{CHECKPOINT}: a forward pass on {shape} failed: {type(exc).__name__}: {exc}"
            ) from None
        if tuple(out.shape) != (1, heads, *shape[2:]) or not bool(torch.isfinite(out).all()):
            raise NnunetError(
                f"fold_{fold}/{CHECKPOINT}: a forward pass on {shape} gave {tuple(out.shape)} "
                f"(expected (1, {heads}, ...), finite)"
            )
    axes = first.get("inference_allowed_mirroring_axes")
    return {
        "trainer_name": trainer_name,
        "mirroring_axes": [int(a) for a in axes] if axes is not None else None,
    }
