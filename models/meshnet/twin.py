"""MeshNet's bf16 twin (the fast CPU path) and its forward, which spends its time in the convolutions.

The twin runs its inner steps in bfloat16, its first and last in float32 (see :func:`bf16_twin` for why).
On a CPU whose bf16 convolutions take about 0.5 s a step on a brain (30 channels, 137x143x186), what
surrounds them costs a lot: every step's output is a fresh 220 MB tensor whose pages the kernel maps and
zeroes on first touch (0.046 s for 220 MB against 0.009 s to write the same pages again), the first step's
float32 output is 440 MB written, read back and cast, and the last step's float32 copy of the bf16
activations is 440 MB more. So this forward:

- runs the first step (float32 convolution from the one input channel, then its activation) 16 planes
  at a time (``SLAB_PLANES``) and casts each slab into a bf16 buffer: no whole float32 activation;
- runs each inner step that maps C channels to C with in-place activations into one of two buffers it
  reuses (oneDNN's in-place convolution, ``torch.ops.mkldnn._convolution_pointwise_``, the one inductor uses,
  adding the convolution to a zeroed buffer: the same output bit for bit), then its activation in place;
- runs the last step (float32, a 1x1x1 classifier) a few planes at a time from the bf16 activations into
  the logits.

Each step's values are the same as the step run whole (tested bit for bit). A step that does not fit one
of these shapes (instance normalisation, a change of channel count, space-to-batch blocks) runs as a module,
as in :class:`MeshNet`. Measured on the AMD EPYC (AVX512-BF16, 2 threads, 2026-11-28) for
brain-mri-structures on subject-a: see ``README.md`` (Fast CPU inference).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Generator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.meshnet.network import ELEMENTWISE, MeshNet, block_runs

__all__ = ["Bf16Twin", "bf16_twin"]

CHANNELS_LAST = torch.channels_last_3d
# Planes per slab of the first and last steps: a 16-plane float32 slab of a 30-channel 143x186 box is 51 MB.
# On subject-a's box the last step took 0.50 s with 4 planes, 0.31-0.41 s with 8 to 32 (AMD EPYC, 2 threads).
SLAB_PLANES = 16

Plan = Literal["slabs", "in_place", "module"]


class Bf16Twin(MeshNet):
    """MeshNet with bf16 inner steps whose :meth:`forward_steps` reuses activation buffers (module doc).

    ``plans``: per step, "slabs" (first or last float32 step, run a few planes at a time), "in_place" (a
    bf16 C -> C step into a reused buffer) or "module" (the step's own modules).
    """

    def __init__(self, steps: list[nn.Sequential], num_classes: int) -> None:
        super().__init__(steps, num_classes)
        self.plans: list[Plan] = ["module"] * len(steps)

    @classmethod
    def from_fp32(cls, net: MeshNet, *, blocks: bool) -> Bf16Twin:
        """The twin of a float32 ``net`` (copied; ``net`` is left as it was). ``blocks``: run the steps
        dilated by BLOCK_DILATION or more on space-to-batch blocks (see ``CpuPath.space_to_batch``)."""
        steps: list[nn.Sequential] = []
        for step in net.steps:
            assert isinstance(step, nn.Sequential)
            steps.append(copy.deepcopy(step))
        inner = [steps[index].to(torch.bfloat16) for index in range(1, len(steps) - 1)]
        if blocks:
            block_runs(inner)
        twin = cls(steps, net.num_classes)
        twin.eval()
        last = len(steps) - 1
        for index, step in enumerate(steps):
            if last > 0 and index in (0, last) and _slab_step(step):
                twin.plans[index] = "slabs"
            elif 0 < index < last and _in_place_step(step) and _in_place_convolution_works():
                twin.plans[index] = "in_place"
        return twin

    def forward_steps(self, x: torch.Tensor) -> Generator[torch.Tensor, None, None]:
        """As :meth:`MeshNet.forward_steps`, but a yielded activation may be overwritten by the step after
        next (its buffer is reused): use each one before asking for the next."""
        dtypes = self.step_dtypes()
        spare: torch.Tensor | None = None  # the buffer the step before last wrote, free for reuse
        for index, step in enumerate(self.steps):
            assert isinstance(step, nn.Sequential)
            dtype = dtypes[index]
            # Slabs and oneDNN's in-place convolution: one (1, C, D, H, W) CPU tensor at a time.
            fits = x.dim() == 5 and x.shape[0] == 1 and x.device.type == "cpu"
            plan = self.plans[index] if fits else "module"
            if plan == "slabs":
                spare = None
                after = next((d for d in dtypes[index + 1 :] if d is not None), dtype)
                x = _by_slabs(step, x, after or x.dtype)
            elif plan == "in_place" and x.dtype == dtype:
                # A step's input may be a view (the cropped output of space-to-batch blocks): only a
                # dense channels-last buffer of the same shape is reused.
                if (
                    spare is None
                    or spare.shape != x.shape
                    or not spare.is_contiguous(memory_format=CHANNELS_LAST)
                ):
                    spare = _channels_last(tuple(x.shape[1:]), x.dtype, x.device)
                out = spare
                conv = step[0]
                assert isinstance(conv, nn.Conv3d)
                _convolve_into(out, conv, x)
                for module in list(step)[1:]:
                    module(out)  # in place (checked by _in_place_step)
                spare, x = x, out
            else:
                spare = None
                if dtype is not None and x.dtype != dtype:
                    x = x.to(dtype)
                x = step(x)
            yield x


def bf16_twin(net: MeshNet, *, blocks: bool) -> Bf16Twin:
    """A copy of ``net`` whose steps run in bfloat16, except the first and the last, which stay float32.

    Why those two: the first step reads the scan's intensities, which bf16's 8-bit mantissa would
    round to about 0.4 % (measured: labels then differ from fp32 on 0.12 % of subject-a's network
    voxels instead of 0.07 %); the last makes the logits that argmax compares, where near ties
    decide labels. Both are cheap (one input channel; a 1x1x1 convolution); the dilated 3x3x3 convolutions
    in between hold nearly all the work. Input and output stay float32 tensors. With ``blocks``, steps
    dilated by ``BLOCK_DILATION`` or more run their convolution as :class:`SpaceToBatchConv3d` (same
    sums; faster where the CPU's bf16 kernels slow down with the dilation, see
    ``models.cpu.CpuPath.space_to_batch``). The copy is a :class:`Bf16Twin`, whose forward reuses its
    activation buffers; ``net`` is left as it was.
    """
    return Bf16Twin.from_fp32(net, blocks=blocks)


def _same_conv(conv: nn.Module) -> bool:
    """A stride-1, ungrouped Conv3d with odd kernels and zero "same" padding: output size = input size."""
    return (
        type(conv) is nn.Conv3d
        and conv.stride == (1, 1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and all(k % 2 == 1 for k in conv.kernel_size)
        and conv.padding == tuple(d * (k // 2) for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    )


def _conv_step(step: nn.Sequential, dtype: torch.dtype, follower: Callable[[nn.Module], bool]) -> bool:
    """A "same" convolution with ``dtype`` weights followed only by modules ``follower`` accepts."""
    modules = list(step)
    return (
        len(modules) > 0
        and _same_conv(modules[0])
        and modules[0].weight.dtype == dtype
        and all(follower(m) for m in modules[1:])
    )


def _slab_step(step: nn.Sequential) -> bool:
    """A float32 "same" convolution followed only by elementwise activations (plane-wise computable)."""
    return _conv_step(step, torch.float32, lambda m: isinstance(m, ELEMENTWISE))


def _in_place_step(step: nn.Sequential) -> bool:
    """A bf16 C -> C "same" convolution followed only by in-place ELU or ReLU."""
    conv = step[0] if len(step) else None
    return (
        _conv_step(step, torch.bfloat16, lambda m: isinstance(m, nn.ELU | nn.ReLU) and bool(m.inplace))
        and isinstance(conv, nn.Conv3d)
        and conv.in_channels == conv.out_channels
    )


def _by_slabs(step: nn.Sequential, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Run a :func:`_slab_step` on (1, C, D, H, W) ``x`` SLAB_PLANES planes of D at a time, each slab cast
    to the step's dtype on the way in and to ``out_dtype`` on the way out; returns (1, C_out, D, H, W)
    channels-last. The planes beyond the ends are the convolution's own zero padding along D. A slab that
    needs a cast is cast into one buffer made once (a worker gives every block over 1 MiB back to the system
    when it is freed, ``workers.malloc``, so a fresh one per slab would be mapped and zeroed each time)."""
    conv = step[0]
    assert isinstance(conv, nn.Conv3d) and isinstance(conv.padding, tuple)
    dtype, halo, depth = conv.weight.dtype, conv.padding[0], x.shape[2]
    padded = F.pad(x, (0, 0, 0, 0, halo, halo)) if halo else x
    out = _channels_last((conv.out_channels, *x.shape[2:]), out_dtype, x.device)
    planes = min(SLAB_PLANES, depth)
    cast = (
        None
        if x.dtype == dtype
        else _channels_last((x.shape[1], planes + 2 * halo, *x.shape[3:]), dtype, x.device)
    )
    for start in range(0, depth, planes):
        stop = min(depth, start + planes)
        slab = padded[:, :, start : stop + 2 * halo]
        if cast is not None:
            slab = cast[:, :, : stop - start + 2 * halo].copy_(slab)
        y = F.conv3d(slab, conv.weight, conv.bias, 1, (0, *conv.padding[1:]), conv.dilation)
        for module in list(step)[1:]:
            y = module(y)
        out[:, :, start:stop] = y
    return out


def _channels_last(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised (1, *shape) channels-last tensor."""
    return torch.empty((1, *shape), dtype=dtype, device=device).contiguous(memory_format=CHANNELS_LAST)


def _convolve_into(out: torch.Tensor, conv: nn.Conv3d, x: torch.Tensor) -> None:
    """out = conv(x), written into ``out`` (x's shape and dtype) through oneDNN's in-place convolution:
    ``out`` is zeroed, then the convolution is added to it (x + 0 is exact: F.conv3d's values)."""
    out.zero_()
    torch.ops.mkldnn._convolution_pointwise_.binary(
        out, x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "add", 1.0, None, [], None,
    )  # fmt: skip


@functools.cache
def _in_place_convolution_works() -> bool:
    """Whether this torch build has oneDNN's in-place convolution and it gives F.conv3d's values bit for
    bit on a small bf16 probe (else the inner steps run as modules, allocating)."""
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(4, 4, 3, padding=2, dilation=2).to(torch.bfloat16).eval()
    x = torch.randn(1, 4, 6, 7, 5, generator=generator).to(torch.bfloat16)
    x = x.contiguous(memory_format=CHANNELS_LAST)
    try:
        with torch.inference_mode():
            expected = conv(x)
            out = torch.empty_like(x)
            _convolve_into(out, conv, x)
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.equal(out, expected))
