"""Sliding-window stitching: equal to a direct forward, to MONAI's Gaussian blending; progress, cancel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from models.card import Cancelled
from models.sliding import sliding_window_labels, stitch_buffer
from models.testing.make_bundle import build_unet, unet_kwargs


@pytest.fixture(scope="module")
def unet() -> UNet:
    return build_unet(unet_kwargs(3, (8, 16, 32), (2, 2), 1), seed=1)


def _image(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth random structure (so the labels form regions, not salt and pepper), float32."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return ndimage.gaussian_filter(noise, 2.0) * 10


def test_one_window_equals_a_direct_forward(unet: UNet) -> None:
    image = _image((32, 32, 24))
    labels = sliding_window_labels(image, unet, num_classes=3, roi_size=(32, 32, 24))
    with torch.inference_mode():
        direct = unet(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
    assert labels.dtype == np.uint8 and np.array_equal(labels, direct)
    assert len(np.unique(direct)) > 1


@pytest.mark.parametrize(
    ("shape", "overlap", "batch", "dtype"),
    [
        ((70, 50, 41), 0.5, 2, None),  # several windows on every axis, float32 buffer
        ((20, 75, 30), 0.25, 3, None),  # smaller than the window on two axes: padding
        ((70, 50, 41), 0.5, 1, torch.float16),  # float16 buffer
    ],
)
def test_gaussian_stitching_agrees_with_monai(
    unet: UNet, shape: tuple[int, int, int], overlap: float, batch: int, dtype: torch.dtype | None
) -> None:
    image = _image(shape)
    roi = (32, 32, 32)
    ours = sliding_window_labels(
        image, unet, num_classes=3, roi_size=roi, overlap=overlap, sw_batch_size=batch, accumulate_dtype=dtype
    )
    with torch.inference_mode():
        blended = sliding_window_inference(
            torch.from_numpy(image)[None, None], roi, batch, unet, overlap=overlap, mode="gaussian"
        )
    reference = blended.argmax(1)[0].numpy()
    assert ours.shape == shape
    agreement = float((ours == reference).mean())
    assert agreement >= 0.999, agreement


def test_progress_per_window_and_cancel_between_windows(unet: UNet) -> None:
    image = _image((60, 60, 40))
    progress: list[tuple[int, int]] = []
    sliding_window_labels(
        image,
        unet,
        num_classes=3,
        roi_size=(32, 32, 32),
        overlap=0.5,
        on_window=lambda d, t: progress.append((d, t)),
    )
    total = progress[-1][1]
    assert total > 8 and [d for d, _ in progress] == list(range(1, total + 1))
    assert all(b >= a for a, b in itertools.pairwise(d for d, _ in progress))

    calls = []
    checks = []

    def network(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return unet(x)

    def cancel_on_fourth_check() -> bool:
        checks.append(1)
        return len(checks) >= 4

    with pytest.raises(Cancelled):
        sliding_window_labels(
            image,
            network,
            num_classes=3,
            roi_size=(32, 32, 32),
            overlap=0.5,
            is_cancelled=cancel_on_fourth_check,
        )
    assert sum(calls) == 3  # three windows ran, the fourth was never started


def test_intensity_is_applied_per_window_before_zero_padding() -> None:
    seen: list[float] = []

    def network(x: torch.Tensor) -> torch.Tensor:
        seen.append(float(x.min()))
        return torch.cat([torch.zeros_like(x), x - 0.5], dim=1)

    image = np.full((10, 40, 40), 100.0, np.float32)
    labels = sliding_window_labels(
        image, network, num_classes=2, roi_size=(16, 16, 16), intensity=lambda x: x / 100.0
    )
    assert np.all(labels == 1) and min(seen) == 0.0  # padding is 0 after the intensity mapping


def test_stitch_buffer_is_bounded_for_a_large_ct() -> None:
    axis, shape, dtype = stitch_buffer((512, 512, 400), (96, 96, 96), 14)
    nbytes = int(np.prod(shape)) * torch.tensor([], dtype=dtype).element_size()
    # MONAI's full-resolution float32 output would be 14 * 512 * 512 * 400 * 4 bytes = 5.9 GB.
    assert axis == 0 and shape == (14, 96, 512, 400) and dtype == torch.float16
    assert nbytes < 600 * 2**20
    assert stitch_buffer((96, 96, 64), (96, 96, 96), 2)[2] == torch.float32
