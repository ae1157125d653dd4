"""infer_prepadded against MONAI's own SlidingWindowInferer on images smaller than the roi: bit-for-bit the
same output and metadata, one copy of the image, the image handed back with its values and metadata."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNet
from torch import nn

from models.bundle.padding import infer_prepadded, pad_sizes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _net() -> nn.Module:
    torch.manual_seed(3)
    return UNet(3, 2, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()


class _Pair(nn.Module):
    """Two outputs, as a tuple (MONAI stitches each)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.net(x)
        return y, -y


def _image(shape: tuple[int, ...], meta: bool) -> Any:
    torch.manual_seed(5)
    data = torch.rand(1, 2, *shape)
    if not meta:
        return data
    image = MetaTensor(data, affine=torch.diag(torch.tensor([2.0, 1.5, 1.0, 1.0])), meta={"case": "x"})
    image.applied_operations = [{"class": "Spacingd", "id": 1}]
    image.is_batch = True
    return image


def _same_meta(a: dict[str, Any], b: dict[str, Any]) -> bool:
    same = lambda x, y: torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y  # noqa: E731
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("shape", "roi", "kwargs"),
    [
        ((20, 13, 9), (24, 16, 16), {"overlap": 0.25}),  # padded on every axis, one window
        ((30, 13, 7), (16, 16, 16), {"overlap": 0.5, "mode": "gaussian"}),  # several windows along x
        ((17, 24, 11), (16, 16, 16), {"padding_mode": "reflect", "overlap": 0.0}),
        ((9, 9, 9), (16, -1, 12), {"cval": -1.0}),  # a non-positive roi entry falls back to the image
    ],
)
@pytest.mark.parametrize("meta", [True, False])
def test_equals_monai_inferer(shape: tuple[int, ...], roi: tuple[int, ...], kwargs: Any, meta: bool) -> None:
    net = _net()
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, **kwargs)
    image = _image(shape, meta)
    expected = inferer(image, net)
    batch = {"image": _image(shape, meta)}
    with torch.no_grad():
        got = infer_prepadded(inferer, batch, "image", net)
    assert got is not None
    assert type(got) is type(expected)
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(expected))
    back = batch["image"]
    assert type(back) is type(image) and torch.equal(torch.as_tensor(back), torch.as_tensor(image))
    if meta:
        assert _same_meta(got.meta, expected.meta) and got.applied_operations == expected.applied_operations
        assert back.applied_operations == image.applied_operations and back.is_batch is True
        assert torch.equal(back.affine, image.affine)


def test_tuple_outputs_equal_monai() -> None:
    net, inferer = _Pair(), SlidingWindowInferer(roi_size=(16, 16, 16), overlap=0.25)
    expected = inferer(_image((12, 20, 9), True), net)
    got = infer_prepadded(inferer, {"image": _image((12, 20, 9), True)}, "image", net)
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_not_taken_where_monai_would_not_pad_or_is_not_plain() -> None:
    net = _net()
    big = {"image": _image((16, 16, 16), True)}
    assert infer_prepadded(SlidingWindowInferer(roi_size=(16, 16, 16)), big, "image", net) is None
    small = {"image": _image((8, 8, 8), True)}
    assert infer_prepadded(SimpleInferer(), small, "image", net) is None
    assert infer_prepadded(SlidingWindowInferer((16, 16, 16), cpu_thresh=10), small, "image", net) is None
    assert infer_prepadded(SlidingWindowInferer((16, 16, 16), with_coord=True), small, "image", net) is None
    assert small["image"] is not None  # untouched when not taken


def test_pad_sizes_follow_monai_order() -> None:
    # F.pad order: last axis first, the smaller half before the image
    assert pad_sizes((20, 13, 9), (24, 16, 16)) == [3, 4, 1, 2, 2, 2]
    assert pad_sizes((30, 16, 16), (16, 16, 16)) == [0, 0, 0, 0, 0, 0]


def test_zoomed_outputs_are_cropped_as_monai_crops_them() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.Upsample(scale_factor=2)).eval()
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), overlap=0.25)
    with torch.no_grad():
        expected = inferer(_image((11, 20, 7), True), net)
        got = infer_prepadded(inferer, {"image": _image((11, 20, 7), True)}, "image", net)
    assert got is not None and got.shape == expected.shape == (1, 3, 22, 40, 14)
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(expected))
