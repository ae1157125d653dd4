"""The bf16 twin's forward (models/meshnet/twin.py) gives the values of its steps run as modules, bit for bit.

It runs the first and last float32 steps a slab of planes at a time, and the bf16 C -> C steps into two
reused buffers through oneDNN's in-place convolution; steps of other shapes (instance normalisation, a
change of channel count, space-to-batch blocks) run as modules. Checked on a seeded network with every kind
of step, on sizes whose depth is not a multiple of the slab, with and without blocks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.meshnet import twin as twin_module
from models.meshnet.network import MeshNet
from models.meshnet.twin import Bf16Twin, bf16_twin

LAYOUT = torch.channels_last_3d


def _network() -> MeshNet:
    torch.manual_seed(3)
    convs = [
        nn.Conv3d(1, 6, 3, padding=1),
        nn.Conv3d(6, 6, 3, padding=2, dilation=2),
        nn.Conv3d(6, 6, 3, padding=4, dilation=4),  # with blocks: a run of two blocked steps
        nn.Conv3d(6, 6, 3, padding=8, dilation=8),
        nn.Conv3d(6, 6, 3, padding=2, dilation=2),  # after the blocks' cropped view
        nn.Conv3d(6, 6, 3, padding=1),  # + ReLU; reuses a buffer
        nn.Conv3d(6, 6, 3, padding=1),  # + instance normalisation: runs as modules
        nn.Conv3d(6, 5, 3, padding=1),  # 6 -> 5 channels: runs as modules
        nn.Conv3d(5, 3, 1),  # the classifier
    ]
    steps = [nn.Sequential(conv, nn.ELU(inplace=True)) for conv in convs[:-1]] + [nn.Sequential(convs[-1])]
    steps[5][1] = nn.ReLU(inplace=True)
    steps[6].insert(1, nn.InstanceNorm3d(6))
    for conv in convs:
        nn.init.uniform_(conv.bias, -0.3, 0.6)  # type: ignore[arg-type]
    return MeshNet(steps, 3).eval()


def test_plans_follow_the_shape_of_each_step() -> None:
    twin = bf16_twin(_network(), blocks=False)
    assert isinstance(twin, Bf16Twin)
    inner = ["in_place"] * 5 + ["module", "module"]
    assert twin.plans == ["slabs", *inner, "slabs"]
    blocked = bf16_twin(_network(), blocks=True)
    assert blocked.plans == [
        "slabs",
        "in_place",
        "module",
        "module",
        "in_place",
        "in_place",
        "module",
        "module",
        "slabs",
    ]
    assert twin_module._in_place_convolution_works()  # the pinned torch has it: a change would show here


@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("size", [(37, 21, 18), (16, 9, 30), (3, 12, 11)])
def test_twin_forward_equals_its_steps_run_as_modules(
    blocks: bool, size: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(twin_module, "SLAB_PLANES", 8)  # 37 planes: slabs of 8, 8, 8, 8 and 5
    twin = bf16_twin(_network(), blocks=blocks)
    twin.to(memory_format=LAYOUT)  # type: ignore[call-overload]
    x = torch.rand(1, 1, *size).contiguous(memory_format=LAYOUT)
    with torch.inference_mode():
        got = [step.clone() for step in twin.forward_steps(x)]
        expected = [step.clone() for step in MeshNet.forward_steps(twin, x)]
    assert len(got) == len(expected) == twin.num_steps
    # the first step's slabs are cast on the way out; as modules, the step after it casts its input
    assert got[0].dtype == torch.bfloat16 and expected[0].dtype == torch.float32
    expected[0] = expected[0].to(torch.bfloat16)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, index
        assert torch.equal(a, b), f"step {index} differs"
    assert got[-1].dtype == torch.float32


def test_inner_steps_reuse_two_buffers() -> None:
    """The step after next writes into the buffer of a step's output: no fresh activation per step."""
    twin = bf16_twin(_network(), blocks=False)
    twin.to(memory_format=LAYOUT)  # type: ignore[call-overload]
    x = torch.rand(1, 1, 20, 17, 19).contiguous(memory_format=LAYOUT)
    with torch.inference_mode():
        pointers = [step.data_ptr() for step in twin.forward_steps(x)]
    # steps 1, 2, 3 run in place: step 3 writes where step 1 did; step 2 where the first step's slabs went
    assert pointers[3] == pointers[1]
    assert pointers[2] == pointers[0]
    assert len({pointers[1], pointers[2]}) == 2
