"""A bundle's pre-processing, network, inferer and post-processing, built by MONAI's own ConfigParser.

Steps (every one names the config element that fails):
  1. read the config as data (models.bundle.config) and drop SaveImaged (trust.without_saving);
  2. scan what the service evaluates (models.bundle.trust). Fatal findings refuse; code findings refuse
     unless the bundle is trusted. An untrusted (declarative) bundle is parsed from the *used* top-level
     entries only, so not even its ``imports`` are seen by MONAI; a trusted one whole;
  3. the service's overrides: ``bundle_root`` (the installed folder), ``device``, ``output_dir`` and
     ``dataset_dir`` (a temporary folder; nothing is written there), and, on a machine without CUDA,
     ``torch.device('cuda')`` in expressions becomes the worker's device (published DiNTS configs load their
     architecture with ``map_location`` CUDA; MONAI's runner needs the same override to run on CPU);
  4. ``parser.get_parsed_content`` of network_def (or network), preprocessing, inferer, postprocessing,
     and the evaluator when it is the bundle's own (not SupervisedEvaluator; trusted code by definition):
     it then runs each case itself (VISTA-3D's prompts), holding the network of step 5;
  5. the weights the config's CheckpointLoader names (``load_path``; MONAI's wrapping of a bare state dict
     into its single ``load_dict`` key), loaded with ``weights_only=True`` and ``strict=True``; a ``.ts`` file
     is TorchScript. Without a loader: ``models/model.pt``, else ``models/model.ts``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ComponentLocator, ConfigParser
from monai.transforms import Compose
from torch import nn

from models.bundle.config import WEIGHTS_PT, WEIGHTS_TS, BundleError, BundleInfo, load_config, read_bundle
from models.bundle.slab_resample import use_slab_resampling
from models.bundle.trust import (
    Scan,
    join_value,
    label_readers,
    own_evaluator,
    scan_config,
    short_target,
    weights_loader,
    without_saving,
)

IMAGE_KEY = "image"  # MONAI's SupervisedEvaluator reads CommonKeys.IMAGE from each batch


@functools.lru_cache(maxsize=1)
def _locator() -> ComponentLocator:
    return ComponentLocator()


def monai_component_module(name: str) -> str | None:
    """The MONAI module MONAI's ConfigParser would take a short ``_target_`` name from (None: not MONAI's)."""
    module = _locator().get_component_module_name(name)
    if isinstance(module, list):
        return module[0] if module else None
    return module


def refusal(scan: Scan) -> str | None:
    """The install-time refusal for an untrusted bundle, naming the first element that runs code."""
    first = scan.first()
    if first is None:
        return None
    return (
        f"this bundle runs code of its own; first: {first.message()}. Install it with --trust-code "
        f"(admin) if you trust its author ({len(scan.findings)} element(s) need code)"
    )


@dataclass
class Pipeline:
    """MONAI's objects for one bundle, ready to run one case (see models.bundle.predictor.run_case)."""

    info: BundleInfo
    scan: Scan
    preprocessing: Callable[[Any], Any]
    network: nn.Module
    inferer: Callable[..., Any]
    postprocessing: Callable[[Any], Any]
    amp: bool
    weights: str
    workdir: tempfile.TemporaryDirectory[str]
    out_channels: int | None = None  # known after tiny_forward or from the manifest: enables the label path
    label_path: bool = True  # models.bundle.stitching where it is exact; False: always MONAI's inferer
    evaluator: Any = None  # the bundle's own MONAI Evaluator (not SupervisedEvaluator): it runs each case
    last_path: str = ""  # which path the last case took: "labels" or "monai" (for tests and logs)


def cuda_to(value: Any, device: str) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        for quote in ("'", '"'):
            value = value.replace(
                f"torch.device({quote}cuda{quote})", f"torch.device({quote}{device}{quote})"
            )
        return value
    if isinstance(value, dict):
        return {k: cuda_to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [cuda_to(v, device) for v in value]
    return value


@contextlib.contextmanager
def _bundle_on_path(directory: Path) -> Iterator[None]:
    """The bundle root on ``sys.path`` while MONAI builds a trusted bundle, as MONAI's runner puts it there
    (ConfigWorkflow.run), so ``scripts.my_transforms.X`` resolves to *this* bundle's scripts: modules of
    that name already loaded from another bundle are dropped first (every Zoo bundle calls it "scripts")."""
    names = {p.stem for p in directory.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    for module in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[module]
    sys.path.insert(1, str(directory))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(directory))


def _monai_id(where: str) -> str:
    return where.replace("#", "::")


def _parsed(parser: ConfigParser, where: str) -> Any:
    try:
        return parser.get_parsed_content(_monai_id(where))
    except Exception as exc:  # MONAI wraps the real error (TypeError, ImportError...) in RuntimeError
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise BundleError(f"{where} cannot be built by MONAI: {str(exc).splitlines()[0]}{cause}") from None


def _state_dict(loaded: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    """MONAI's CheckpointLoader: ``checkpoint[key]`` (a bare state dict is taken as that entry)."""
    if key is not None and isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
        loaded = loaded[key]
    elif key is None and isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise BundleError(f"{path} does not hold a state dict of tensors (got {type(loaded).__name__})")
    return {str(k): v for k, v in loaded.items()}


def _weights(
    config: dict[str, Any], parser: ConfigParser, directory: Path, overrides: dict[str, Any], trusted: bool
) -> tuple[Path, str | None]:
    """The weight file the config loads and its ``load_dict`` key (None without a CheckpointLoader)."""
    loader = weights_loader(config)
    if loader is None:
        for name in (WEIGHTS_PT, WEIGHTS_TS):
            if (directory / name).is_file():
                return directory / name, None
        raise BundleError(
            f"bundle {directory.name} has no weights loader and neither {WEIGHTS_PT} nor {WEIGHTS_TS}"
        )
    where, item = loader
    raw = item.get("load_path")
    path = raw if isinstance(raw, str) and not raw.startswith(("$", "@")) else None
    if path is None and isinstance(raw, str):
        path = join_value(raw, config, overrides)
    if path is None and trusted:
        path = str(_parsed(parser, f"{where}#load_path"))
    if path is None:
        raise BundleError(f"{where}#load_path: {raw!r} does not name a weight file")
    file = Path(path) if Path(path).is_absolute() else directory / path
    load_dict = item.get("load_dict")
    key = next(iter(load_dict)) if isinstance(load_dict, dict) and len(load_dict) == 1 else None
    if not file.is_file():
        raise BundleError(f"{where}#load_path: the weight file {file.name} is missing")
    return file, key


def load_weights(network: nn.Module, file: Path, key: str | None, device: torch.device) -> nn.Module:
    """``network`` with the weights of ``file`` loaded strictly (TorchScript ``.ts``: the loaded module)."""
    if file.suffix == ".ts":
        try:
            return torch.jit.load(str(file), map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            raise BundleError(f"{file.name} is not a loadable TorchScript model: {exc}") from None
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a damaged or unsafe file
        raise BundleError(f"{file.name} cannot be read as weights: {type(exc).__name__}: {exc}") from None
    try:
        network.load_state_dict(_state_dict(loaded, key, file), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{file.name} does not fit the network: {str(exc)[:500]}") from None
    return network.to(device).eval()


def numpy_safe_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` needs to read numpy arrays (data, no code): published DiNTS
    bundles keep their searched architecture (``search_code_*.pt``) as numpy arrays, which torch >= 2.6
    refuses by default; MONAI's runner on this torch fails on them the same way."""
    import numpy as np

    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    core = np._core if hasattr(np, "_core") else np.core
    reconstruct = getattr(core, "multiarray")._reconstruct  # noqa: B009 (numpy 1 and 2 differ)
    return [reconstruct, np.ndarray, np.dtype, *dtypes]


def build(directory: Path, device: str = "cpu", trusted: bool = False) -> Pipeline:
    """MONAI's components of the bundle at ``directory``; see :func:`_build`. A trusted bundle is built
    with its root on ``sys.path`` (scripts/) and numpy arrays readable by torch.load(weights_only=True)."""
    directory = Path(directory).resolve()
    if not trusted:
        return _build(directory, device, trusted)
    with _bundle_on_path(directory), torch.serialization.safe_globals(numpy_safe_globals()):
        return _build(directory, device, trusted)


def _build(directory: Path, device: str, trusted: bool) -> Pipeline:
    """MONAI's components of the bundle at ``directory`` (its configs as they are on disk).

    Raises:
        BundleError: the bundle runs code and is not ``trusted``; an element cannot be honoured or built;
            the weights are missing or do not fit. The message names the element.
    """
    info = read_bundle(directory)
    config = without_saving(load_config(directory / info.config_path))
    if "label" in info.input_keys and (readers := label_readers(config)):
        # A label that only LoadImaged loads is fed a stand-in (models.bundle.predictor.case_data); one
        # that another step reads would change the prediction, and a job has no such file.
        raise BundleError(
            f"cannot be honoured: preprocessing LoadImaged keys {list(info.input_keys)}: its inference "
            f"reads a 'label' (reference segmentation) for every case and uses it in {readers[0]}, and a "
            "segmentation job does not have one"
        )
    workdir = tempfile.TemporaryDirectory(prefix="segserve-bundle-")
    overrides: dict[str, Any] = {
        "bundle_root": str(directory),
        "device": torch.device(device),
        "output_dir": workdir.name,
        "dataset_dir": workdir.name,
    }
    scan = scan_config(config, monai_component_module, {k: v for k, v in overrides.items() if k != "device"})
    fatal = next((f for f in scan.findings if f.fatal), None)
    if fatal is not None:
        raise BundleError(f"cannot be honoured: {fatal.message()}")
    if scan.executes_code and not trusted:
        raise BundleError(str(refusal(scan)))
    if scan.executes_code:
        parsed_config = config if torch.device(device).type == "cuda" else cuda_to(config, device)
    else:
        parsed_config = {k: config[k] for k in scan.used}
    parser = ConfigParser(parsed_config)
    for name, value in overrides.items():
        parser[name] = value
    network: Any = _parsed(parser, scan.network_root) if scan.network_root in config else None
    if network is not None and not isinstance(network, nn.Module):
        raise BundleError(f"{scan.network_root} is a {type(network).__name__}, not a torch network")
    file, key = _weights(parsed_config, parser, directory, overrides, trusted)
    if network is not None:
        pass
    elif file.suffix == ".ts":
        network = nn.Identity()  # replaced by the TorchScript module
    else:
        raise BundleError(f"{info.config_path} has no network_def for the weights {file.name}")
    network = load_weights(network, file, key, torch.device(device))
    preprocessing = _parsed(parser, "preprocessing") if "preprocessing" in config else Compose([])
    use_slab_resampling(preprocessing)  # Spacingd (and its inverse) in slabs: MONAI's values, less memory
    if "inferer" in config:
        inferer = _parsed(parser, "inferer")
    else:
        from monai.inferers import SimpleInferer

        inferer = SimpleInferer()
    postprocessing = _parsed(parser, "postprocessing") if "postprocessing" in config else Compose([])
    evaluator = config.get("evaluator")
    amp = bool(evaluator.get("amp", False)) if isinstance(evaluator, dict) else False
    own = _own_evaluator(parser, config, network) if own_evaluator(config) else None
    for name, part in (("preprocessing", preprocessing), ("postprocessing", postprocessing)):
        if not callable(part):
            raise BundleError(f"{name} is a {type(part).__name__}, not a transform")
    return Pipeline(
        info=info,
        scan=scan,
        preprocessing=preprocessing,
        network=network,
        inferer=inferer,
        postprocessing=postprocessing,
        amp=amp,
        weights=file.relative_to(directory).as_posix() if file.is_relative_to(directory) else file.name,
        workdir=workdir,
        evaluator=own,
        label_path=own is None,
    )


def _own_evaluator(parser: ConfigParser, config: dict[str, Any], network: nn.Module) -> Any:
    """The bundle's own evaluator (a SupervisedEvaluator subclass such as VISTA-3D's), built by MONAI from the
    config with the service's overrides, holding ``network`` (its weights loaded). Its data loader is
    replaced for each case (models.bundle.predictor.run_evaluator)."""
    from monai.engines import SupervisedEvaluator

    target = own_evaluator(config)
    evaluator = _parsed(parser, "evaluator")
    if not isinstance(evaluator, SupervisedEvaluator):
        raise BundleError(
            f"cannot be honoured: evaluator#_target_: {target} is a {type(evaluator).__name__}, not a "
            "SupervisedEvaluator (the service runs one network per case through the bundle's evaluator)"
        )
    evaluator.network = network
    return evaluator


def post_transforms(pipeline: Pipeline) -> list[Any]:
    """The post-processing steps in order (a Compose's transforms, or the one transform)."""
    post = pipeline.postprocessing
    return list(post.transforms) if isinstance(post, Compose) else [post]


def probe_labels(pipeline: Pipeline, channel_names: Mapping[int, str], out_channels: int) -> dict[int, str]:
    """Label value -> name of what the bundle writes, found by running its post-processing (Invertd left out:
    no grid here) on one row of voxels per output channel where only that channel is on (logit +10,
    others -10).

    Channel c's name goes to the value its voxel becomes (BraTS: TC -> 1, WT -> 2, ET -> 4 through its
    Lambdad). Raises BundleError when the chain does not give one label value per voxel.
    """
    from monai.data import MetaTensor

    # (C, C, 2, 2), no axis of size 1: some scripts squeeze() their input (renal's MergeClassesd)
    logits = torch.full((out_channels, max(out_channels, 2), 2, 2), -10.0)
    for channel in range(out_channels):
        logits[channel, channel] = 10.0
    data: Any = {
        "pred": MetaTensor(logits),
        IMAGE_KEY: MetaTensor(torch.zeros(1, max(out_channels, 2), 2, 2)),
    }
    try:
        for step in post_transforms(pipeline):
            if short_target(type(step).__name__) in ("Invertd", "SaveImaged"):
                continue
            data = step(data)
        values = torch.as_tensor(data["pred"])
    except Exception as exc:  # the bundle's own transforms raise anything
        raise BundleError(f"postprocessing cannot be probed for its label values: {exc}") from None
    if values.ndim != 4 or values.shape[0] != 1:
        raise BundleError(f"postprocessing gives {tuple(values.shape)} per case, not one label map")
    labels: dict[int, str] = {0: "background"}
    for channel in range(out_channels):
        value = round(float(values[0, channel, 0, 0]))
        if value != 0 and value not in labels:
            labels[value] = channel_names.get(channel, f"class-{value}")
    return labels


def tiny_forward(pipeline: Pipeline, device: str = "cpu") -> int:
    """Run the network once on a small zero input of the bundle's channel count; returns its output
    channels. The spatial size is 32 per axis (the inferer's roi_size where that is smaller), which every
    Zoo network accepts (a multiple of 2 ** 5); failures are BundleError naming the network."""
    from monai.inferers import SlidingWindowInferer

    size = [32, 32, 32]
    inferer = pipeline.inferer
    if isinstance(inferer, SlidingWindowInferer):
        roi: Any = inferer.roi_size
        roi_list = [int(r) for r in roi] if isinstance(roi, list | tuple) else [int(roi)] * 3
        size = [min(32, r) if r > 0 else 32 for r in roi_list]
    channels = pipeline.info.network_in_channels or len(pipeline.info.input_channels)
    x = torch.zeros(1, channels, *size, device=torch.device(device))
    try:
        with torch.no_grad():
            out = pipeline.network(x)
    except Exception as exc:  # any failure of the bundle's network is an install error
        raise BundleError(
            f"network {pipeline.info.network_target or 'network'} fails on a "
            f"{tuple(x.shape)} input: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    if isinstance(out, list | tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != x.ndim:
        raise BundleError(f"network returns {type(out).__name__}, not a (1, C, X, Y, Z) tensor")
    pipeline.out_channels = int(out.shape[1])
    return pipeline.out_channels
