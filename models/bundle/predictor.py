"""BundlePredictor: a MONAI bundle (3D U-Net, SegResNet, ...) behind the Predictor contract.

Pipeline for one case (C input channels, each a volume on one shared grid; C = 1 for most bundles):
    inputs C x (I, J, K) --reorient to the bundle's axcodes, resample to its pixdim (models.grid)-->
    C x (X, Y, Z) --per window: intensity (CT window, or z-score per channel), zero padding--> (C, *roi)
    --network, sliding window with Gaussian blending, bounded stitching buffer (models.sliding)-->
    labels (X, Y, Z) (softmax: argmax; sigmoid: region bits -> innermost region wins, models.regions)
    --largest connected component of chosen structures--> --nearest neighbour--> (I, J, K) of channel 0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.bundle.config import BundleError, BundleSpec, Intensity, read_bundle
from models.bundle.network import load_network
from models.card import Cancelled, ModelCard, ModelUnavailable, check_card
from models.grid import to_model_grid
from models.postprocess import keep_largest_component
from models.regions import regions_to_labels
from models.sliding import IntensityFn, sliding_window_labels
from segserve.imaging.volume import Volume

# Share of the progress bar before / after the windows (resampling; post-processing and mapping back).
_PRE, _POST = 0.05, 0.05


def intensity_function(
    spec: Intensity | None, image: np.ndarray | Sequence[np.ndarray]
) -> IntensityFn | None:
    """A per-window function (float32 in, float32 out, may work in place) for ``spec`` on ``image``.

    Statistics the transform needs (z-score mean/std, min/max) are taken once over the whole image:
    one (X, Y, Z) array, or several taken together (channels normalised jointly).
    """
    if spec is None:
        return None
    images = [image] if isinstance(image, np.ndarray) else list(image)
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
        mean, std = _moments(images, spec.nonzero)

        def zscore(x: np.ndarray) -> np.ndarray:
            mask = x != 0 if spec.nonzero else None
            out = (x - np.float32(mean)) / np.float32(std)
            return np.where(mask, out, 0).astype(np.float32) if mask is not None else out

        return zscore
    if spec.kind == "minmax":
        lo, hi = min(float(np.min(i)) for i in images), max(float(np.max(i)) for i in images)
        span = hi - lo if hi > lo else 1.0

        def minmax(x: np.ndarray) -> np.ndarray:
            return ((x - np.float32(lo)) / np.float32(span) * (spec.b_max - spec.b_min) + spec.b_min).astype(
                np.float32
            )

        return minmax
    raise ValueError(f"intensity kind must be 'range', 'zscore' or 'minmax', got {spec.kind!r}")


def channels_intensity(spec: Intensity | None, channels: Sequence[np.ndarray]) -> IntensityFn | None:
    """A per-window function on (C, *window) float32 patches for ``spec`` on C (X, Y, Z) channels.

    Statistics (z-score mean/std, min/max) are per channel when ``spec.channel_wise``, otherwise taken over
    all channels together, as MONAI's NormalizeIntensityd does without ``channel_wise``. CT windowing has
    none, so it is the same either way.
    """
    if spec is None:
        return None
    if spec.channel_wise:
        functions = [intensity_function(spec, channel) for channel in channels]
    else:
        functions = [intensity_function(spec, channels)] * len(channels)

    def per_channel(x: np.ndarray) -> np.ndarray:
        for index, function in enumerate(functions):
            if function is not None:
                x[index] = function(x[index])
        return x

    return per_channel


def _moments(images: Sequence[np.ndarray], nonzero: bool) -> tuple[float, float]:
    """Mean and standard deviation over all voxels of ``images`` (float64 sums, one slab at a time, no
    full-size copies); std 0 becomes 1, as in MONAI."""
    count, total, squares = 0, 0.0, 0.0
    for plane in (np.asarray(p, dtype=np.float64) for image in images for p in image):
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
        volume: Volume | Sequence[Volume],
        *,
        on_progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Segment one case.

        Args:
            volume: the scan, or one volume per input channel in ``spec.input_channels`` order, all on
                the grid of the first (the caller checks that; see segserve.scans.readers).
        Returns:
            labels with the first volume's shape, on its grid: uint8 for up to 256 classes.
        Raises:
            ValueError: the number of volumes is not the bundle's number of input channels.
            Cancelled: ``is_cancelled()`` returned True (checked between batches of windows).
        """
        report = on_progress or (lambda _fraction: None)
        spec = self.spec
        volumes = [volume] if isinstance(volume, Volume) else list(volume)
        if len(volumes) != spec.in_channels:
            raise ValueError(
                f"model {self.card.id} takes {spec.in_channels} input channels "
                f"({', '.join(spec.input_channels)}), got {len(volumes)} volumes"
            )
        grids = [to_model_grid(v, spec.axcodes, spec.pixdim) for v in volumes]
        grid, channels = grids[0], [g.array for g in grids]
        report(_PRE)

        def on_window(done: int, total: int) -> None:
            report(_PRE + (1.0 - _PRE - _POST) * done / total)

        with torch.inference_mode():
            labels = sliding_window_labels(
                channels,
                self._forward,
                num_classes=spec.out_channels,
                activation="sigmoid" if spec.activation == "sigmoid" else "softmax",
                roi_size=spec.roi_size,
                overlap=spec.overlap,
                sw_batch_size=spec.sw_batch_size,
                blend=spec.blend,
                sigma_scale=spec.sigma_scale,
                intensity=channels_intensity(spec.intensity, channels),
                device=self.device,
                on_window=on_window,
                is_cancelled=is_cancelled,
            )
        if is_cancelled is not None and is_cancelled():
            raise Cancelled()
        del channels, grids
        if spec.activation == "sigmoid":
            labels = regions_to_labels(labels, spec.out_channels)
        keep_largest_component(labels, self.largest_component)
        out = grid.labels_to_source(labels)
        report(1.0)
        return out
