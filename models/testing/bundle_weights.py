"""Seeded random weights for a real bundle's own network definition, and small crops of real scans.

    copy_bundle(source, target)            the bundle's configs (and scripts/, docs/) without weights
    write_seeded_weights(bundle, seed)     models/model.pt from the bundle's own ``network_def``, built by
                                           MONAI's ConfigParser (tests and demos only: the config's code
                                           runs), weights drawn with ``torch.manual_seed(seed)``
    write_crop(scan, target, box)          a box of a real NIfTI scan, its affine moved to the box

Nothing here is committed as a blob: tests call these and write into their temporary folders.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from models.bundle.config import load_config, read_bundle


def copy_bundle(source: Path, target: Path) -> Path:
    """Copy a bundle folder without its ``models/`` (the weights the caller makes)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("models", "__pycache__", "eval"))
    (target / "models").mkdir(exist_ok=True)
    return target


def seeded_network(bundle: Path, seed: int = 0, key: str = "network_def") -> torch.nn.Module:
    """The bundle's own ``network_def`` (MONAI's ConfigParser, imports and expressions evaluated) with
    ``torch.manual_seed(seed)`` initial weights and non-trivial normalisation statistics, in eval mode."""
    from monai.bundle import ConfigParser

    from models.bundle.build import cuda_to, numpy_safe_globals

    info = read_bundle(bundle)
    parser = ConfigParser(cuda_to(load_config(bundle / info.config_path), "cpu"))  # DiNTS: CUDA-only config
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(seed)
    with torch.serialization.safe_globals(numpy_safe_globals()):
        network = parser.get_parsed_content(key)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                assert module.running_var is not None
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return network.eval()


def write_seeded_weights(bundle: Path, seed: int = 0, name: str = "models/model.pt") -> torch.nn.Module:
    """Save the seeded network's state dict where the bundle's config loads it from."""
    network = seeded_network(bundle, seed)
    (bundle / name).parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), bundle / name)
    return network


def write_crop(scan: Path, target: Path, box: Sequence[slice], dtype: type | None = None) -> Path:
    """Write ``scan[box]`` (voxel slices) to ``target`` with the affine moved to the box's corner."""
    image: Any = nib.load(str(scan))
    array = np.asanyarray(image.dataobj)[tuple(box)]
    if dtype is not None:
        array = array.astype(dtype)
    start = np.array([s.start or 0 for s in box] + [1][: 4 - len(box)], dtype=np.float64)[:3]
    affine = image.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    nib.save(nib.Nifti1Image(array, affine), str(target))
    return target
