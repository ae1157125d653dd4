"""BundlePredictor: a MONAI bundle (3D U-Net, SegResNet, ...) behind the Predictor contract.

Pipeline for one volume:
    input (I, J, K) --reorient to the bundle's axcodes, resample to its pixdim (models.grid)--> (X, Y, Z)
    --per window: intensity (CT window a_min..a_max -> b_min..b_max, or z-score), zero padding--> (1, *roi)
    --network, sliding window with Gaussian blending, bounded stitching buffer (models.sliding)-->
    labels (X, Y, Z) --largest connected component of chosen structures--> --nearest neighbour--> (I, J, K)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.bundle import BundleError, BundleSpec, Intensity, read_bundle
from models.bundle_net import load_network
from models.catalog import Cancelled, ModelCard, ModelUnavailable, check_card
from models.grid import to_model_grid
from models.postprocess import keep_largest_component
from models.sliding import IntensityFn, sliding_window_labels
from segserve.imaging.volume import Volume

# Share of the progress bar before / after the windows (resampling; post-processing and mapping back).
_PRE, _POST = 0.05, 0.05


def intensity_function(spec: Intensity | None, image: np.ndarray) -> IntensityFn | None:
    """A per-window function (float32 in, float32 out, may work in place) for ``spec`` on ``image``.

    Statistics the transform needs (z-score mean/std, min/max) are taken once over the whole image.
    """
    if spec is None:
        return None
    if spec.kind == "range":
        scale = np.float32((spec.b_max - spec.b_min) / (spec.a_max - spec.a_min))
        a_min, b_min = np.float32(spec.a_min), np.float32(spec.b_min)
        low, high = sorted((spec.b_min, spec.b_max))

        def window(x: np.ndarray) -> np.ndarray:
            x -= a_min
            x *= scale
            x += b_min
            if spec.clip:
                np.clip(x, low, high, out=x)
            return x

        return window
    if spec.kind == "zscore":
        mean, std = _moments(image, spec.nonzero)

        def zscore(x: np.ndarray) -> np.ndarray:
            mask = x != 0 if spec.nonzero else None
            out = (x - np.float32(mean)) / np.float32(std)
            return np.where(mask, out, 0).astype(np.float32) if mask is not None else out

        return zscore
    if spec.kind == "minmax":
        lo, hi = float(np.min(image)), float(np.max(image))
        span = hi - lo if hi > lo else 1.0

        def minmax(x: np.ndarray) -> np.ndarray:
            return ((x - np.float32(lo)) / np.float32(span) * (spec.b_max - spec.b_min) + spec.b_min).astype(
                np.float32
            )

        return minmax
    raise ValueError(f"intensity kind must be 'range', 'zscore' or 'minmax', got {spec.kind!r}")


def _moments(image: np.ndarray, nonzero: bool) -> tuple[float, float]:
    """Mean and standard deviation (float64 sums, one slab at a time, no full-size copies)."""
    count, total, squares = 0, 0.0, 0.0
    for index in range(image.shape[0]):
        plane = np.asarray(image[index], dtype=np.float64)
        if nonzero:
            plane = plane[plane != 0]
        count += plane.size
        total += float(plane.sum())
        squares += float(np.square(plane).sum())
    if count == 0:
        return 0.0, 1.0
    mean = total / count
    std = max(squares / count - mean * mean, 0.0) ** 0.5
    return mean, std if std > 0 else 1.0


class BundlePredictor:
    """A loaded bundle network and its pre/post-processing. Not thread-safe: one ``predict`` at a time."""

    def __init__(
        self,
        card: ModelCard,
        spec: BundleSpec,
        network: nn.Module,
        device: str = "cpu",
        largest_component: Iterable[int] | None = None,
    ) -> None:
        self.card = card
        self.spec = spec
        self.network = network
        self.device = torch.device(device)
        chosen = card.params.get("largest_component") if largest_component is None else largest_component
        self.largest_component = tuple(int(v) for v in chosen) if isinstance(chosen, list | tuple) else ()
        if spec.in_channels != 1:
            raise ModelUnavailable(
                f"model {card.id} takes {spec.in_channels} input channels; the service supplies one image"
            )

    @classmethod
    def load(cls, card: ModelCard, models_dir: Path, device: str = "cpu") -> BundlePredictor:
        """Verify the bundle's files against its manifest, read its configs and build the network.

        Raises:
            ModelUnavailable: a file is missing or changed, or the bundle cannot be used (the reason).
        """
        reason = check_card(card, models_dir)
        if reason is not None:
            raise ModelUnavailable(reason)
        try:
            spec = read_bundle(Path(models_dir) / str(card.params["bundle_dir"]))
            network = load_network(spec, device)
        except (BundleError, KeyError) as exc:
            raise ModelUnavailable(f"model {card.id}: {exc}") from exc
        return cls(card, spec, network, device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the network's parameters and buffers."""
        tensors = [*self.network.parameters(), *self.network.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            context: torch.autocast | nullcontext[None] = torch.autocast("cuda", dtype=dtype)
        else:
            context = nullcontext()
        with context:
            return self.network(x)

    def predict(
        self,
        volume: Volume,
        *,
        on_progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Segment ``volume``.

        Returns:
            labels with shape ``volume.shape`` on the input's own grid: uint8 for up to 256 classes.
        Raises:
            Cancelled: ``is_cancelled()`` returned True (checked between batches of windows).
        """
        report = on_progress or (lambda _fraction: None)
        spec = self.spec
        grid = to_model_grid(volume, spec.axcodes, spec.pixdim)
        report(_PRE)

        def on_window(done: int, total: int) -> None:
            report(_PRE + (1.0 - _PRE - _POST) * done / total)

        with torch.inference_mode():
            labels = sliding_window_labels(
                grid.array,
                self._forward,
                num_classes=spec.num_classes,
                roi_size=spec.roi_size,
                overlap=spec.overlap,
                sw_batch_size=spec.sw_batch_size,
                blend=spec.blend,
                sigma_scale=spec.sigma_scale,
                intensity=intensity_function(spec.intensity, grid.array),
                device=self.device,
                on_window=on_window,
                is_cancelled=is_cancelled,
            )
        if is_cancelled is not None and is_cancelled():
            raise Cancelled()
        keep_largest_component(labels, self.largest_component)
        out = grid.labels_to_source(labels)
        report(1.0)
        return out
