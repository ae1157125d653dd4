"""Building a bundle's network and loading its weights, without running any code from the bundle.

``models/model.pt``: the class named by ``network_def._target_`` must be an ``nn.Module`` subclass
exported by ``monai.networks.nets``; it gets the JSON keyword arguments, then the state dict, read with
``torch.load(weights_only=True)`` (no pickle code execution). Accepted layouts: a state dict,
``{"model": state_dict}`` or ``{"state_dict": state_dict}``; a ``module.`` prefix (DataParallel) is
dropped. ``models/model.ts``: TorchScript via ``torch.jit.load`` (a serialized graph, not Python).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import monai.networks.nets as monai_nets
import torch
from torch import nn

from models.bundle.config import WEIGHTS_TS, BundleError, BundleSpec


def network_class(target: str) -> type[nn.Module]:
    """The class ``monai.networks.nets.<target>``; BundleError for anything else."""
    candidate = getattr(monai_nets, target, None) if not target.startswith("_") else None
    if not (isinstance(candidate, type) and issubclass(candidate, nn.Module)):
        raise BundleError(
            f"network _target_ {target!r} is not a network class of monai.networks.nets; refused"
        )
    return candidate


def _state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "network"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise BundleError(f"{path} does not hold a state dict of tensors (got {type(loaded).__name__})")
    state = {str(k): v for k, v in loaded.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_network(spec: BundleSpec, device: torch.device | str = "cpu") -> nn.Module:
    """The bundle's network with its weights, in eval mode on ``device``.

    Raises:
        BundleError: the class is refused, its arguments are wrong, or the weights do not fit it.
    """
    path = spec.directory / spec.weights
    if spec.weights == WEIGHTS_TS:
        try:
            network: nn.Module = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as exc:
            raise BundleError(f"{path} is not a loadable TorchScript model: {exc}") from None
        return network.eval()
    cls = network_class(spec.network_target)
    try:
        network = cls(**spec.network_kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise BundleError(
            f"network_def {spec.network_target}({spec.network_kwargs}) cannot be built: {exc}"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a damaged or unsafe file
        raise BundleError(f"{path} cannot be read as weights: {type(exc).__name__}: {exc}") from None
    try:
        network.load_state_dict(_state_dict(loaded, path), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path} does not fit {spec.network_target}: {str(exc)[:500]}") from None
    return network.to(device).eval()
