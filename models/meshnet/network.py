"""MeshNet: a chain of dilated 3D convolutions, built from a parsed TF.js layers-model.

The network is fully convolutional with stride 1, so any input size works and the output has the input's
spatial shape. Each "step" is one Conv3d (plus instance normalisation for brainchop's
``_gn`` layers) and the activation that follows it; :meth:`MeshNet.forward_steps`
yields after every step so a caller can report progress and stop early.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Generator

import torch
import torch.nn.functional as F
from torch import nn

from models.meshnet.tfjs import ActivationLayer, Conv3DLayer, TfjsModel

# ELU and ReLU work in place on the convolution's output: one activation-sized tensor less at the peak
# (a 30-channel step on 256^3 is 2 GB); same kernels, so the same values bit for bit.
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": lambda: nn.ELU(inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    # TF.js "gelu" is the exact erf form (its tanh approximation is "gelu_new"), as is torch's default.
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def _conv3d(layer: Conv3DLayer) -> nn.Conv3d:
    # TF "same" padding with an odd kernel and stride 1 is symmetric: dilation * (k // 2) on each side.
    (d0, d1, d2), (k0, k1, k2) = layer.dilation_rate, layer.kernel_size
    padding = (d0 * (k0 // 2), d1 * (k1 // 2), d2 * (k2 // 2))
    conv = nn.Conv3d(
        layer.in_channels,
        layer.filters,
        kernel_size=layer.kernel_size,
        dilation=layer.dilation_rate,
        padding=padding,
        bias=layer.bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(layer.kernel))
        if layer.bias is not None and conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(layer.bias))
    return conv


# Dilation from which a bf16 step's convolution runs as an undilated one on space-to-batch blocks: oneDNN's
# bf16 kernels for large dilations are several times slower than for dilation 1 (measured on an AMX Xeon with
# torch 2.13, 30 channels on 128^3: dilation 8 2.13 s direct vs 0.38 s as blocks, 16: 8.73 vs 0.64; dilation
# 4 about equal, 2 faster direct); fp32 kernels are not (dilation 8 1.58 s direct vs 2.25 s as blocks).
BLOCK_DILATION = 8


class SpaceToBatchConv3d(nn.Module):
    """A stride-1 Conv3d with equal dilation ``d`` on every axis and "same" padding, computed as an undilated
    convolution (padding 1) of the ``d^3`` interleaved sub-grids ``x[..., a::d, b::d, c::d]`` stacked as a
    batch, then put back in place (TensorFlow's ``space_to_batch`` way of running atrous convolutions).

    Each output voxel is the same sum of the same products (weights and input voxels), the zero padding too;
    only the kernel that sums them differs. Sizes not divisible by ``d`` are zero-padded at their far end
    (the convolution's own zero padding) and the output cropped. Input (1, C, D, H, W), channels_last_3d
    preferred (one copy each way); output (1, C_out, D, H, W), a channels-last view.
    """

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        d = conv.dilation[0]
        if set(conv.dilation) != {d} or conv.stride != (1, 1, 1) or conv.kernel_size != (3, 3, 3):
            raise ValueError(f"needs a stride-1 3x3x3 convolution with one dilation, got {conv}")
        if conv.padding != (d, d, d):
            raise ValueError(f"needs 'same' padding {d}, got {conv.padding}")
        self.dilation = d
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation
        n, c, *size = x.shape
        if n != 1:
            return self.conv(x)
        conv = self.conv
        shape = [-(-s // d) for s in size]  # sub-grid sizes; the input is zero-padded at the far ends to
        full = [s * d for s in shape]  # whole multiples of d, which is the convolution's own zero padding
        if full != size:
            padded = x.new_zeros((1, c, *full)).contiguous(memory_format=torch.channels_last_3d)
            padded[:, :, : size[0], : size[1], : size[2]] = x
            x = padded
        # (1, C, D, H, W) -> (D', d, H', d, W', d, C) -> (d, d, d, D', H', W', C): one copy; channels last
        blocks = x.permute(0, 2, 3, 4, 1).reshape(shape[0], d, shape[1], d, shape[2], d, c)
        del x
        blocks = blocks.permute(1, 3, 5, 0, 2, 4, 6).reshape(d**3, *shape, c).permute(0, 4, 1, 2, 3)
        out = F.conv3d(blocks, conv.weight, conv.bias, 1, 1, 1)
        del blocks
        channels = out.shape[1]
        out = out.permute(0, 2, 3, 4, 1).reshape(d, d, d, *shape, channels)
        out = out.permute(3, 0, 4, 1, 5, 2, 6).reshape(1, *full, channels).permute(0, 4, 1, 2, 3)
        if full != size:
            out = out[:, :, : size[0], : size[1], : size[2]]
        return out


class MeshNet(nn.Module):
    """Sequential MeshNet.

    Input: float32 tensor (N, C_in, D, H, W). Output: logits (N, num_classes, D, H, W).
    """

    def __init__(self, steps: list[nn.Sequential], num_classes: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.num_classes = num_classes

    @classmethod
    def from_tfjs(cls, model: TfjsModel) -> MeshNet:
        """Build the network and copy the weights of ``model`` into it (in eval mode)."""
        steps: list[nn.Sequential] = []
        for layer in model.layers:
            if isinstance(layer, Conv3DLayer):
                step = nn.Sequential(_conv3d(layer))
                if layer.instance_norm:
                    # brainchop's instanceNorm: population variance, eps 1e-5, no learnt scale/shift.
                    step.append(nn.InstanceNorm3d(layer.filters, eps=1e-5, affine=False))
                steps.append(step)
            elif isinstance(layer, ActivationLayer) and layer.activation != "linear":
                if not steps:
                    steps.append(nn.Sequential())
                steps[-1].append(_ACTIVATIONS[layer.activation]())
        net = cls(steps, model.num_classes)
        net.eval()
        return net

    @property
    def num_steps(self) -> int:
        """Number of convolution steps (one progress tick each)."""
        return len(self.steps)

    def with_bf16_inner_steps(self) -> MeshNet:
        """A copy whose steps run in bfloat16, except the first and the last, which stay float32.

        Why those two: the first step reads the scan's intensities, which bf16's 8-bit mantissa would
        round to about 0.4 % (measured: labels then differ from fp32 on 0.12 % of subject-a's network
        voxels instead of 0.07 %); the last makes the logits that argmax compares, where near ties
        decide labels. Both are cheap (one input channel; a 1x1x1 convolution); the dilated 3x3x3 convolutions
        in between hold nearly all the work. Input and output stay float32 tensors. Steps dilated by
        ``BLOCK_DILATION`` or more run their convolution as :class:`SpaceToBatchConv3d` (same sums, faster
        bf16 kernels).
        """
        twin = copy.deepcopy(self)
        for index in range(1, len(twin.steps) - 1):
            step = twin.steps[index].to(torch.bfloat16)
            assert isinstance(step, nn.Sequential)
            conv = step[0] if len(step) else None
            if isinstance(conv, nn.Conv3d) and min(conv.dilation) >= BLOCK_DILATION:
                with contextlib.suppress(ValueError):  # another shape of convolution: runs dilated
                    step[0] = SpaceToBatchConv3d(conv)
        twin.eval()
        return twin

    def step_dtypes(self) -> list[torch.dtype | None]:
        """Each step's compute dtype (that of its weights); None for a step without weights."""
        return [next((p.dtype for p in step.parameters()), None) for step in self.steps]

    def forward_steps(self, x: torch.Tensor) -> Generator[torch.Tensor, None, None]:
        """Run the network one step at a time, yielding the activation after each step.

        The last yielded tensor is the logits. The generator holds only the current activation, so
        memory stays at about two activations; stop iterating to abandon the pass. Each step's input is
        cast to the step's dtype first (see :meth:`with_bf16_inner_steps`); a float32 network casts nothing.
        """
        for step, dtype in zip(self.steps, self.step_dtypes(), strict=True):
            if dtype is not None and x.dtype != dtype:
                x = x.to(dtype)  # rebinding drops the previous activation before the step allocates its own
            x = step(x)
            yield x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for out in self.forward_steps(x):
            x = out
        return x
