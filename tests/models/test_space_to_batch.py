"""MeshNet's bf16 twin runs its most dilated convolutions on space-to-batch blocks (smaller dilations).

The blocks give the dilated convolution's values (fp32: to rounding; bf16: the same bf16 values, a last-bit
difference allowed where the kernels sum in another order), for sizes divisible by the base and not (zero
padding at the far ends, zeroed again between the steps of a run), channels-last and contiguous inputs, one
step or a run of steps sharing the blocks; and the twin uses them only where the dilation reaches
BLOCK_DILATION, sharing blocks only across elementwise activations.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.cpu import FP32, CpuPath
from models.meshnet.network import BLOCK_DILATION, BlockGrid, MeshNet, SpaceToBatchConv3d
from models.meshnet.twin import bf16_twin


def _conv(channels: int, dilation: int, dtype: torch.dtype) -> nn.Conv3d:
    torch.manual_seed(dilation)
    return nn.Conv3d(channels, channels + 2, 3, dilation=dilation, padding=dilation).eval().to(dtype)


@pytest.mark.parametrize(("dilation", "base"), [(2, 2), (8, 8), (16, 16), (16, 4), (8, 2)])
@pytest.mark.parametrize("size", [(32, 32, 48), (19, 26, 37), (5, 40, 17)])
@pytest.mark.parametrize("layout", [torch.channels_last_3d, torch.contiguous_format])
def test_blocks_equal_the_dilated_convolution_fp32(
    dilation: int, base: int, size: tuple[int, int, int], layout: torch.memory_format
) -> None:
    conv = _conv(6, dilation, torch.float32).to(memory_format=layout)  # type: ignore[call-overload]
    x = torch.randn(1, 6, *size).contiguous(memory_format=layout)
    with torch.inference_mode():
        expected = conv(x)
        got = SpaceToBatchConv3d(conv, base)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dilation", [8, 16])
def test_blocks_equal_the_dilated_convolution_bf16(dilation: int) -> None:
    conv = _conv(30, dilation, torch.bfloat16).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    x = torch.randn(1, 30, 37, 41, 29).to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        expected = conv(x).float()
        got = SpaceToBatchConv3d(conv, dilation)(x).float()
    # one bf16 unit in the last place at most (8 bits of mantissa), on a few voxels only
    close = torch.isclose(got, expected, rtol=2**-7, atol=1e-3)
    assert bool(close.all())
    assert float((got == expected).float().mean()) > 0.99


@pytest.mark.parametrize("size", [(32, 32, 32), (19, 26, 37), (9, 4, 30)])
def test_a_run_of_steps_sharing_blocks_equals_the_dilated_steps(size: tuple[int, int, int]) -> None:
    """4, 8, 16, 8, 4 with ELU between them (biases make the padding voxels non-zero after each step)."""
    dilations = [4, 8, 16, 8, 4]
    torch.manual_seed(0)
    layout = torch.channels_last_3d
    convs = [nn.Conv3d(5, 5, 3, dilation=d, padding=d).to(memory_format=layout) for d in dilations]
    for conv in convs:
        nn.init.uniform_(conv.bias, 0.5, 1.0)  # type: ignore[arg-type]
    grid = BlockGrid()
    last = len(convs) - 1
    blocked = [
        SpaceToBatchConv3d(conv, 4, enter=i == 0, leave=i == last, grid=grid) for i, conv in enumerate(convs)
    ]
    x = torch.randn(1, 5, *size).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        expected, got = x, x
        for conv, block in zip(convs, blocked, strict=True):
            expected = torch.nn.functional.elu(conv(expected))
            got = torch.nn.functional.elu(block(got))
    assert got.shape == expected.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(ValueError, match="stride-1 3x3x3"):
        SpaceToBatchConv3d(nn.Conv3d(2, 2, 3, dilation=(8, 8, 4), padding=8), 4)
    with pytest.raises(ValueError, match="'same' padding"):
        SpaceToBatchConv3d(nn.Conv3d(2, 2, 3, dilation=8, padding=0), 8)
    with pytest.raises(ValueError, match="not a multiple"):
        SpaceToBatchConv3d(nn.Conv3d(2, 2, 3, dilation=6, padding=6), 4)


def test_twin_blocks_only_the_most_dilated_inner_steps() -> None:
    dilations = [1, 2, 4, 8, 16, 8, 4, 2, 1, 16]
    steps = [nn.Sequential(nn.Conv3d(3, 3, 3, dilation=d, padding=d), nn.ELU()) for d in dilations]
    steps[5].append(nn.InstanceNorm3d(3))  # not elementwise: ends the run of shared blocks there
    net = MeshNet(steps, 3).eval()
    twin = bf16_twin(net, blocks=True)
    convs = [step[0] for step in twin.steps]
    # the first and last steps stay float32 convolutions (dilation 16 at the end included)
    inner = [0 < i < len(dilations) - 1 and d >= BLOCK_DILATION for i, d in enumerate(dilations)]
    assert [isinstance(c, SpaceToBatchConv3d) for c in convs] == inner
    blocked = [c for c in convs if isinstance(c, SpaceToBatchConv3d)]
    # dilations 4, 8, 16, 8 (+ norm) share blocks; the norm ends that run; the next 4 is a run of its own
    runs = [(True, False), (False, False), (False, False), (False, True), (True, True)]
    assert [(c.enter, c.leave) for c in blocked] == runs
    assert twin.step_dtypes()[1:-1] == [torch.bfloat16] * (len(dilations) - 2)
    x = torch.randn(1, 3, 20, 23, 18)
    with torch.inference_mode():
        reference = bf16_twin(net, blocks=False)  # every convolution dilated directly
        assert not any(isinstance(step[0], SpaceToBatchConv3d) for step in reference.steps)
        torch.testing.assert_close(twin(x), reference(x), rtol=0.05, atol=0.05)


def test_blocks_only_where_the_cpu_path_asks_for_them() -> None:
    """AMX: blocks (its bf16 kernels slow down with the dilation); AVX512-BF16 alone and fp32: direct."""
    assert CpuPath("bf16", "amx_bf16", "test").space_to_batch
    assert not CpuPath("bf16", "avx512_bf16", "test").space_to_batch
    assert not FP32.space_to_batch
