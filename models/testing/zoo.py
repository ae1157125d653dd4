"""Real MONAI Model Zoo bundles made runnable offline: seeded weights, real scans, MONAI's own runner.

For tests and benchmarks only (never imported by the service). Three parts:

    seed_bundle(src, dest, seed)
        copy a Zoo bundle (configs, scripts, docs; ``../shared/zoo/<name>``) and write seeded random weights
        built from the bundle's OWN ``network_def``, parsed with MONAI's ConfigParser, saved where the config
        loads them (a state dict at the CheckpointLoader's ``load_path``; TorchScript when that path ends in
        ``.ts``). DiNTS bundles first get a random searched architecture (``TopologySearch(...).decode()``)
        at ``arch_ckpt_path``.
    make_case(name, data, dest)
        a real scan of the bundle's modality from ``../shared/data``, cropped so that the bundle's own
        ``roi_size`` covers it in few windows (the roi and overlap are never changed): the channel files, in
        the bundle's channel order.
    run_monai(bundle, case, out)
        MONAI's own runner, ``python -m monai.bundle run``, in a subprocess on the same files; returns the
        label map it saved.

CPU overrides: published DiNTS configs load their searched architecture onto CUDA and put ``dints_space`` on
a CUDA device, so even MONAI's runner fails without a GPU; :func:`cpu_overrides` gives the two config
overrides (the same ones the service must apply) used for both the weights and the runner.

Inputs (documented choices; shapes are the files' voxel grids):
    CT, one channel         ``ct/spleen`` (0.79x0.79x5 mm) or ``ct/abdomen-totalseg`` (3 mm), cropped.
    renal, 3 phases         the same real CT crop for the arterial, venous and excretory phases, the
                            latter two shifted by +60 HU and +120 HU (the shared data has no multi-phase CT).
    brats, 4 channels       ``mri-lesion/brain-tumor`` (a real T1 MRI with a tumour), cropped: T1c = the scan,
                            T1 = the scan 3x3x1-box-smoothed, T2 = the inverted scan inside the head, FLAIR =
                            the scan squared (rescaled); all on the scan's own grid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

ZOO_BUNDLES = (
    "spleen_ct_segmentation",
    "swin_unetr_btcv_segmentation",
    "wholeBody_ct_segmentation",
    "multi_organ_segmentation",
    "renalStructures_CECT_segmentation",
    "brats_mri_segmentation",
    "vista3d",
    "spleen_deepedit_annotation",
)


def brats_like_channels(t1c: np.ndarray, smooth: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Four distinct, anatomy-following channels (BraTS order T1c, T1, T2, FLAIR) from one real MRI volume:
    the scan, a box-smoothed copy (``smooth`` voxels), the head's inverted intensities and a squared contrast.
    Every channel differs, so a swapped channel order changes a bundle's output."""
    from scipy.ndimage import uniform_filter

    t1c = t1c.astype(np.float32)
    head = t1c > np.percentile(t1c, 20)
    return {
        "t1c": t1c,
        "t1": uniform_filter(t1c, size=smooth),
        "t2": np.where(head, t1c.max() - t1c, 0).astype(np.float32),
        "flair": (t1c**2 / max(float(t1c.max()), 1.0)).astype(np.float32),
    }


def config_file(bundle: Path, name: str = "inference") -> Path:
    """``configs/<name>.json`` or ``.yaml`` / ``.yml`` of a bundle."""
    for ext in (".json", ".yaml", ".yml"):
        path = Path(bundle) / "configs" / f"{name}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{bundle}: no configs/{name}.json or .yaml")


def _raw_config(bundle: Path) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    return dict(ConfigParser.load_config_file(config_file(bundle)))


def cpu_overrides(bundle: Path) -> dict[str, Any]:
    """Config overrides that let a CUDA-pinned config run on a CPU (empty for most bundles).

    DiNTS configs: ``arch_ckpt`` loads with ``map_location`` CUDA (and, with torch >= 2.6, ``weights_only``
    refuses the numpy arrays it holds); ``dints_space#device`` is a CUDA device.
    """
    raw = _raw_config(bundle)
    out: dict[str, Any] = {}
    if "cuda" in str(raw.get("arch_ckpt", "")):
        out["arch_ckpt"] = (
            "$torch.load(@arch_ckpt_path, map_location=torch.device('cpu'), weights_only=False)"
        )
    space = raw.get("dints_space")
    if isinstance(space, dict) and "cuda" in str(space.get("device", "")):
        out["dints_space#device"] = "$torch.device('cpu')"
    return out


def run_id(bundle: Path) -> str:
    """The bundle's entry point: ``run`` in most configs, ``inference`` or ``evaluating`` in older ones."""
    raw = _raw_config(bundle)
    return next((k for k in ("run", "inference", "evaluating") if k in raw), "run")


def _parser(bundle: Path, overrides: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file(bundle)))
    parser.read_meta(str(Path(bundle) / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser.update(overrides)
    return parser


def _checkpoint_paths(parser: Any) -> list[str]:
    """Config ids of every CheckpointLoader's ``load_path`` (top-level or inside ``handlers``)."""
    found: list[str] = []

    def walk(node: Any, at: str) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).endswith("CheckpointLoader") and "load_path" in node:
                found.append(f"{at}#load_path" if at else "load_path")
            for k, v in node.items():
                walk(v, f"{at}#{k}" if at else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{at}#{i}")

    for key in ("checkpointloader", "handlers", "validate#handlers"):
        if key in parser:
            walk(parser.get(key), key)
    return found


def _write_search_code(path: Path, parser: Any, seed: int) -> None:
    """A random valid DiNTS searched architecture (node_a, arch_code_a, arch_code_a_max, arch_code_c)."""
    import torch
    from monai.networks.nets import TopologySearch

    space = parser.get("dints_space")
    torch.manual_seed(seed)
    search = TopologySearch(
        channel_mul=space.get("channel_mul", 1.0),
        num_blocks=space.get("num_blocks", 6),
        num_depths=space.get("num_depths", 3),
        use_downsample=space.get("use_downsample", True),
        device="cpu",
    )
    node_a, arch_code_a, arch_code_c, arch_code_a_max = search.decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "node_a": np.asarray(node_a),
            "arch_code_a": np.asarray(arch_code_a),
            "arch_code_a_max": np.asarray(arch_code_a_max),
            "arch_code_c": np.asarray(arch_code_c),
        },
        path,
    )


def seed_bundle(src: Path, dest: Path, seed: int = 0, without: tuple[str, ...] = ()) -> Path:
    """Copy the Zoo bundle ``src`` to ``dest`` and write seeded random weights where its config loads them.

    The network is the config's own ``network_def`` (instantiated by MONAI's ConfigParser with
    ``torch.manual_seed(seed)``); batch-norm running statistics are perturbed (seeded) so that eval mode is
    not an identity. ``without``: config ids left out when building the weights only (the copied config is
    unchanged), for a definition that today's MONAI no longer builds although its published weights load
    (swin_unetr_btcv_segmentation's ``network_def#img_size``). Returns ``dest``.
    """
    import torch

    src, dest = Path(src), Path(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    parser = _parser(dest, cpu_overrides(dest))
    for config_id in without:
        parent, _, key = config_id.rpartition("#")
        node = dict(parser.get(parent))
        node.pop(key, None)
        parser[parent] = node
    if "arch_ckpt_path" in parser:
        _write_search_code(Path(parser.get_parsed_content("arch_ckpt_path")), parser, seed)
    sys.path.insert(0, str(dest))  # configs that `import scripts` (vista3d) need the bundle on the path
    try:
        torch.manual_seed(seed)
        net = parser.get_parsed_content("network_def", instantiate=True)
        targets = sorted({str(parser.get_parsed_content(i)) for i in _checkpoint_paths(parser)})
    finally:
        sys.path.remove(str(dest))
        for mod in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[mod]
    if not targets:
        raise ValueError(f"{src.name}: the config loads no checkpoint (no CheckpointLoader load_path)")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                assert module.running_var is not None
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    net = net.eval()
    for target in targets:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".ts":
            torch.jit.script(net).save(str(path))
        else:
            torch.save(net.state_dict(), path)
    return dest


@dataclass
class Case:
    """One case's input files (channel name -> NIfTI path, in the bundle's channel order) and what MONAI's
    runner needs to read them (config overrides naming those files)."""

    channels: dict[str, Path]
    runner_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def first(self) -> Path:
        return next(iter(self.channels.values()))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array, RAS affine) of a NIfTI or NRRD file, read by MONAI's LoadImage (as the runner reads it)."""
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(str(path))
    return np.asarray(img), np.asarray(img.affine, dtype=np.float64)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _crop(array: np.ndarray, affine: np.ndarray, start: tuple[int, ...], size: tuple[int, ...]) -> Any:
    sl = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
    out_affine = affine.copy()
    out_affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return np.ascontiguousarray(array[sl]), out_affine


# Crops (start, size) chosen so each bundle's roi covers the resampled crop in one or a few windows.
_CT_CROPS: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int]]] = {
    # spleen CT 0.79x0.79x5 mm; 1.5x1.5x2 mm -> 84x84x65 (one 96^3 window)
    "spleen_ct_segmentation": ("spleen", (20, 30, 0), (160, 136, 26)),
    "swin_unetr_btcv_segmentation": ("spleen", (20, 30, 0), (160, 136, 26)),
    # 1 mm -> 79x79x90 (one 96^3 window)
    "multi_organ_segmentation": ("spleen", (40, 40, 4), (100, 100, 18)),
    # abdomen CT 3 mm; highres 1.5 mm -> 96x96x60 (one window)
    "wholeBody_ct_segmentation": ("abdomen", (30, 25, 0), (48, 48, 30)),
    # 0.8 mm -> 94x94x94
    "renalStructures_CECT_segmentation": ("spleen", (40, 40, 6), (95, 95, 15)),
    # vista3d resamples to 1.5 mm; 128^3 patch -> one window after CropForeground
    "vista3d": ("spleen", (20, 30, 0), (160, 136, 26)),
    # deepedit resizes to 128^3 whatever the input
    "spleen_deepedit_annotation": ("spleen", (20, 30, 0), (120, 120, 26)),
}
_CT_FILES = {
    "spleen": ("ct", "spleen", "sub-spleen2_ct.nii.gz"),
    "abdomen": ("ct", "abdomen-totalseg", "example_ct_sm.nii.gz"),
}


def make_case(name: str, data: Path, dest: Path) -> Case:
    """The input files of bundle ``name`` for one case, written under ``dest`` (see the module docstring)."""
    dest = Path(dest)
    if name == "brats_mri_segmentation":
        arr, aff = _load(Path(data) / "mri-lesion" / "brain-tumor" / "brain1_image.nrrd")
        arr, aff = _crop(arr.astype(np.float32), aff, (40, 40, 0), (176, 176, 25))
        channels = brats_like_channels(arr, smooth=(3, 3, 1))
        paths = {k: _save(v, aff, dest / f"{k}.nii.gz") for k, v in channels.items()}
        return Case(paths, {"test_datalist": [{"image": [str(p) for p in paths.values()]}]})
    source, start, size = _CT_CROPS[name]
    arr, aff = _load(Path(data).joinpath(*_CT_FILES[source]))
    arr, aff = _crop(arr.astype(np.int16), aff, start, size)
    if name == "renalStructures_CECT_segmentation":
        phases = {"artery": 0, "vein": 60, "excret": 120}
        paths = {k: _save((arr + d).astype(np.int16), aff, dest / f"{k}.nii.gz") for k, d in phases.items()}
        label = _save(np.zeros(arr.shape, np.uint8), aff, dest / "reference_label.nii.gz")
        images = [{k: str(p) for k, p in paths.items()}]
        return Case(paths, {"images": images, "labels": [str(label)], "dataset_dir": str(dest)})
    path = _save(arr, aff, dest / "image.nii.gz")
    if name == "multi_organ_segmentation":
        return Case({"image": path}, {"datalist": [{"image": str(path)}]})
    if name == "vista3d":  # no label_prompt, no points: the everything-prompt default
        return Case({"image": path}, {"input_dict": {"image": str(path)}})
    return Case({"image": path}, {"datalist": [str(path)]})


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_monai(bundle: Path, case: Case, out_dir: Path, timeout: float = 1800) -> np.ndarray:
    """Labels of MONAI's own runner (``python -m monai.bundle run``) on ``case``, as saved by the bundle's
    ``SaveImaged`` (on the first input's grid). Raises RuntimeError with the runner's output on failure."""
    bundle, out_dir = Path(bundle), Path(out_dir)
    overrides = {**cpu_overrides(bundle), **case.runner_overrides, "output_dir": str(out_dir)}
    args = [
        sys.executable, "-m", "monai.bundle", "run", run_id(bundle),
        "--config_file", str(config_file(bundle)),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--bundle_root", str(bundle),
    ]  # fmt: skip
    for key, value in overrides.items():
        args += [f"--{key}", _cli_value(value)]
    env = {**os.environ, "PYTHONPATH": str(bundle)}
    proc = subprocess.run(args, cwd=bundle, env=env, capture_output=True, text=True, timeout=timeout)
    stem = case.first.name.removesuffix(".nii.gz")
    saved = sorted(p for p in out_dir.rglob(f"{stem}*.nii*") if p.is_file())
    if proc.returncode != 0 or not saved:
        raise RuntimeError(
            f"MONAI runner failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    img: Any = nib.load(str(saved[0]))
    return np.asarray(img.get_fdata(dtype=np.float32)).squeeze()
