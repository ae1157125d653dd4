"""models.bundle.slab_resample and models.bundle.inversion: Spacingd, its inverse in Invertd and the fused
Invertd + argmax, computed in slabs, equal MONAI's whole-volume transforms bit for bit (values, affine,
recorded operations) on a real CT, and on oblique grids with every supported mode and padding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialResample,
)

from models.bundle import slab_resample
from models.bundle.inversion import InvertArgmax, fuse_invert_argmax
from models.bundle.slab_resample import SlabSpatialResample, use_slab_resampling
from tests.support.paths import DATA

CT = DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz"  # 122 x 101 x 30, 3 mm, int16 HU


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "id"}  # id: the transform object's id()
    return value.tolist() if hasattr(value, "tolist") else value


def _assert_same(ours: Any, theirs: Any) -> None:
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours.as_tensor(), theirs.as_tensor())
    assert torch.equal(ours.affine, theirs.affine)
    assert [_plain(o) for o in ours.applied_operations] == [_plain(o) for o in theirs.applied_operations]


def _preprocessing(axcodes: str, pixdim: tuple[float, ...], scale_first: bool = False) -> Compose:
    steps: list[Any] = [LoadImaged("image"), EnsureChannelFirstd("image")]
    if scale_first:
        steps.append(ScaleIntensityRanged("image", -100, 200, 0.0, 1.0, clip=True))
    steps += [Orientationd("image", axcodes=axcodes), Spacingd("image", pixdim=pixdim, mode="bilinear")]
    return Compose(steps)


@pytest.mark.parametrize(("axcodes", "pixdim"), [("RAS", (2.2, 2.6, 2.0)), ("LPS", (4.1, 2.3, 1.7))])
def test_spacingd_and_invertd_in_slabs_equal_monai_on_a_real_ct(
    axcodes: str, pixdim: tuple[float, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slab_resample, "SLAB_VOXELS", 200_000)  # many slabs, several input boxes each
    theirs_pre, ours_pre = _preprocessing(axcodes, pixdim), _preprocessing(axcodes, pixdim)
    (resampler,) = use_slab_resampling(ours_pre)
    assert resampler.load_dtype == torch.float32  # LoadImaged keeps the int16
    assert ours_pre.transforms[0]._loader.dtype is None
    theirs = theirs_pre({"image": str(CT)})
    ours = ours_pre({"image": str(CT)})
    _assert_same(ours["image"], theirs["image"])
    assert ours["image"].dtype == torch.float32 and len(torch.unique(ours["image"])) > 1000

    # the inverse, of a 2-channel probability map as the spleen bundle inverts it, and the fused argmax
    generator = torch.Generator().manual_seed(0)
    shape = theirs["image"].shape[1:]
    logits = torch.nn.functional.avg_pool3d(torch.randn((1, 2, *shape), generator=generator), 5, 1, 2)[0]
    probabilities = torch.softmax(logits * 5, 0)
    for nearest in (False, True):
        steps = {
            name: [
                Invertd("pred", transform=pre, orig_keys="image", nearest_interp=nearest),
                AsDiscreted("pred", argmax=True),
            ]
            for name, pre in (("theirs", theirs_pre), ("ours", ours_pre))
        }
        data = {
            name: {"pred": MetaTensor(probabilities.clone(), meta=d["image"].meta), "image": d["image"]}
            for name, d in (("theirs", theirs), ("ours", ours))
        }
        inverted = {name: steps[name][0](dict(data[name]))["pred"] for name in steps}
        _assert_same(inverted["ours"], inverted["theirs"])
        assert inverted["theirs"].shape == (2, 122, 101, 30)
        labels = steps["theirs"][1]({"pred": inverted["theirs"]})["pred"]
        fused = fuse_invert_argmax(steps["ours"])
        assert len(fused) == 1 and isinstance(fused[0], InvertArgmax)
        ours_labels = fused[0](dict(data["ours"]))["pred"]
        assert resampler.argmax_taken == 1
        _assert_same(ours_labels, labels)
        assert 0.2 < float(labels.mean()) < 0.8


def test_load_dtype_is_kept_only_before_index_steps() -> None:
    compose = _preprocessing("RAS", (2.0, 2.0, 2.0), scale_first=True)
    (resampler,) = use_slab_resampling(compose)
    assert resampler.load_dtype is None and compose.transforms[0]._loader.dtype == np.float32


def _oblique(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    angles = rng.uniform(-0.4, 0.4, 2)
    c0, s0, c1, s1 = np.cos(angles[0]), np.sin(angles[0]), np.cos(angles[1]), np.sin(angles[1])
    rotation = np.array([[c0, -s0, 0], [s0, c0, 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, c1, -s1], [0, s1, c1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(rng.uniform(0.7, 1.3, 3) * spacing * rng.choice([-1, 1], 3))
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2) + rng.normal(0, 3, 3)
    return affine


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("mode", "padding"), [("bilinear", "border"), ("bilinear", "zeros"), ("nearest", "zeros")]
)
def test_oblique_resampling_in_slabs_equals_spatial_resample(
    seed: int, mode: str, padding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotated, flipped grids that overlap in part: every input box and the clipping at the borders."""
    monkeypatch.setattr(slab_resample, "SLAB_VOXELS", 1500)
    rng = np.random.default_rng(seed)
    in_shape = tuple(int(n) for n in rng.integers(12, 30, 3))
    out_shape = tuple(int(n) for n in rng.integers(10, 40, 3))
    channels = 1 + seed % 3
    values = torch.as_tensor(rng.normal(0, 100, (channels, *in_shape)), dtype=torch.float32)
    image = MetaTensor(values, affine=torch.as_tensor(_oblique(rng, in_shape, 2.0)))
    dst = torch.as_tensor(_oblique(rng, out_shape, 1.5))
    dtype = np.float64 if seed % 2 else np.float32
    theirs_t = SpatialResample(mode=mode, padding_mode=padding, dtype=dtype)
    ours_t = SlabSpatialResample(theirs_t)
    theirs = theirs_t(image, dst_affine=dst, spatial_size=out_shape)
    ours = ours_t(image, dst_affine=dst, spatial_size=out_shape)
    _assert_same(ours, theirs)
    assert float((theirs != 0).float().mean()) > 0.2
    back = {name: t.inverse(x) for name, t, x in (("ours", ours_t, ours), ("theirs", theirs_t, theirs))}
    _assert_same(back["ours"], back["theirs"])


def test_unsupported_options_run_monai_itself() -> None:
    image = MetaTensor(torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6))
    dst = torch.diag(torch.tensor([0.7, 0.9, 1.3, 1.0], dtype=torch.float64))
    for kwargs in ({"mode": 1}, {"padding_mode": "reflection"}, {"align_corners": True}):
        theirs_t = SpatialResample(**kwargs)
        _assert_same(SlabSpatialResample(theirs_t)(image, dst, (6, 6, 5)), theirs_t(image, dst, (6, 6, 5)))


def test_fused_argmax_falls_back_to_asdiscreted_where_monai_does_not_resample() -> None:
    """An unchanged grid: MONAI's own function runs (no slabs), so AsDiscreted takes the argmax."""
    pre = Compose([Spacingd("image", pixdim=(2.0, 2.0, 2.0), mode="bilinear")])
    (resampler,) = use_slab_resampling(pre)
    image = MetaTensor(torch.rand(1, 6, 7, 8), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    data = pre({"image": image})
    probabilities = torch.softmax(torch.randn(3, 6, 7, 8, generator=torch.Generator().manual_seed(1)), 0)
    steps = [Invertd("pred", transform=pre, orig_keys="image"), AsDiscreted("pred", argmax=True)]
    (fused,) = fuse_invert_argmax(steps)
    out = fused({"pred": MetaTensor(probabilities, meta=data["image"].meta), "image": data["image"]})["pred"]
    assert resampler.argmax_taken == 0
    assert out.shape == (1, 6, 7, 8) and torch.equal(out.as_tensor()[0], probabilities.argmax(0).float())


def test_not_fused_after_another_invertible_step() -> None:
    """A crop's inverse pads: not a step the fusion allows, so Invertd and AsDiscreted stay as they are."""
    from monai.transforms import SpatialPadd

    pre = Compose([Spacingd("image", pixdim=(2.0, 2.0, 2.0)), SpatialPadd("image", (9, 9, 9))])
    use_slab_resampling(pre)
    steps = [Invertd("pred", transform=pre, orig_keys="image"), AsDiscreted("pred", argmax=True)]
    assert fuse_invert_argmax(steps) == steps
