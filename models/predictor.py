"""Predictors: one per model format, built once from a card and then asked to segment many volumes.

Every predictor has ``load(card, models_dir, device)`` and
``predict(volume, *, on_progress=None, is_cancelled=None) -> labels`` (labels on the input's own grid; see
each format's predictor), and holds its network as ``.network``. This module picks the format's class by the
card's ``params["weights_format"]`` and keeps loaded predictors per process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from models.card import Cancelled, ModelCard, ModelUnavailable
from models.cpu import FP32, CpuPath
from models.formats import format_named

__all__ = [
    "Cancelled",
    "ModelUnavailable",
    "get_predictor",
    "load_predictor",
    "set_cpu_path",
    "set_model_cache_budget",
]

# Loaded models are kept per process and evicted least recently used once their weights together pass
# this many bytes (the model just asked for is always kept). Set with set_model_cache_budget().
MODEL_CACHE_BYTES = 4 << 30
_cache: OrderedDict[tuple[str, str, str, str, str], tuple[Any, int]] = OrderedDict()
_cache_lock = threading.Lock()
# The worker's CPU inference path (models.cpu), chosen once at its start; fp32 until set_cpu_path().
_cpu_path: CpuPath = FP32


def set_cpu_path(path: CpuPath) -> None:
    """Set the CPU inference path predictors are loaded with from now on (the worker does, at start)."""
    global _cpu_path
    _cpu_path = path


def cpu_path() -> CpuPath:
    """The CPU inference path predictors are loaded with."""
    return _cpu_path


def set_model_cache_budget(nbytes: int) -> None:
    """Change the cache budget (bytes of weights kept loaded); evicts at the next load."""
    global MODEL_CACHE_BYTES
    if nbytes < 0:
        raise ValueError(f"model cache budget must be >= 0 bytes, got {nbytes}")
    MODEL_CACHE_BYTES = nbytes


def _weight_bytes(predictor: Any) -> int:
    # a predictor's own count first: an nnU-Net model holds every fold's weights beside its one network
    if isinstance(getattr(predictor, "nbytes", None), int):
        return int(predictor.nbytes)
    network = getattr(predictor, "network", None)
    if not isinstance(network, torch.nn.Module):
        return 0
    tensors = [*network.parameters(), *network.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def load_predictor(card: ModelCard, models_dir: Path, device: str = "cpu") -> Any:
    """A new predictor for ``card``: built-in MeshNet cards (``weights_format`` "tfjs-layers") get
    :class:`models.meshnet.predictor.MeshNetPredictor`, installed models their format's predictor; each
    with the CPU path of :func:`set_cpu_path` (bf16 only for a model whose calibration passes)."""
    fmt = format_named(str(card.params.get("weights_format", "")))
    if fmt is not None:
        return fmt.predictor_class().load(card, models_dir, device, cpu_path=_cpu_path)
    from models.meshnet.predictor import MeshNetPredictor

    return MeshNetPredictor.load(card, models_dir, device, cpu_path=_cpu_path)


def get_predictor(card: ModelCard, models_dir: Path, device: str = "cpu") -> Any:
    """A process-wide predictor for (card id, version, models dir, device): loaded once, then reused.

    Least recently used models are dropped when the loaded weights pass ``MODEL_CACHE_BYTES``.
    """
    key = (card.id, card.version, str(Path(models_dir).resolve()), device, _cpu_path.precision)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None and entry[0].card == card:
            _cache.move_to_end(key)
            return entry[0]
        predictor = load_predictor(card, models_dir, device)
        _cache[key] = (predictor, _weight_bytes(predictor))
        _cache.move_to_end(key)
        while len(_cache) > 1 and sum(size for _, size in _cache.values()) > MODEL_CACHE_BYTES:
            _cache.popitem(last=False)
        return predictor
