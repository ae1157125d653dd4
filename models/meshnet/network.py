"""MeshNet: a chain of dilated 3D convolutions, built from a parsed TF.js layers-model.

The network is fully convolutional with stride 1, so any input size works and the output has the input's
spatial shape. Each "step" is one Conv3d (plus instance normalisation for brainchop's
``_gn`` layers) and the activation that follows it; :meth:`MeshNet.forward_steps`
yields after every step so a caller can report progress and stop early.
"""

from __future__ import annotations

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


# Dilation from which a bf16 step's convolution runs on space-to-batch blocks (SpaceToBatchConv3d), and the
# blocks' base: oneDNN's bf16 kernels slow down steeply with the dilation (AMX Xeon, torch 2.13, 30 channels
# on 128^3: dilation 1 0.34 s, 2 0.49 s, 4 0.70 s, 8 2.13 s, 16 8.73 s); fp32 kernels do not (dilation 8
# 1.58 s direct, 2.25 s as blocks), so only the bf16 twin uses them. brain-mri-structures' bf16 forward on
# subject-a: 12.64 s direct, 3.67 s with base 8, 3.42 s with base 4 (dilations 4, 8, 16, 8, 4 run as 1, 2, 4,
# 2, 1 on one set of 4^3 blocks); labels the same in all three (2026-11-28).
BLOCK_DILATION = 4


ELEMENTWISE = (nn.ELU, nn.ReLU, nn.GELU, nn.Sigmoid, nn.Tanh)


class BlockGrid:
    """The full grid's spatial size, shared by the steps of one run of :class:`SpaceToBatchConv3d`: set by the
    run's first step (the one that makes the blocks), read by the later ones. One forward at a time."""

    size: tuple[int, int, int] = (0, 0, 0)


class SpaceToBatchConv3d(nn.Module):
    """A stride-1 3x3x3 Conv3d with dilation ``d`` (a multiple of ``base``) and "same" padding, computed on
    the ``base^3`` interleaved sub-grids ``x[..., a::base, b::base, c::base]`` stacked as a batch, as a
    convolution with dilation ``d / base`` (TensorFlow's ``space_to_batch`` way of running atrous
    convolutions); oneDNN's bf16 kernels are much faster at small dilations.

    Each output voxel is the same sum of the same products (weights and input voxels), the zero padding too;
    only the kernel that sums them differs. Sizes not divisible by ``base`` are zero-padded at their far end
    (the convolution's own zero padding). Consecutive steps share the blocks: the first of a run (``enter``)
    takes (1, C, D, H, W) (channels_last_3d preferred: one copy) and makes (base^3, C, D', H', W'), every
    later one first zeroes the padding voxels (the previous step's activation made them non-zero), the last
    (``leave``) puts the output back, (1, C_out, D, H, W), a channels-last view. Between steps of a run only
    elementwise activations may act on the blocks.
    """

    def __init__(
        self,
        conv: nn.Conv3d,
        base: int,
        *,
        enter: bool = True,
        leave: bool = True,
        grid: BlockGrid | None = None,
    ) -> None:
        super().__init__()
        reason = self.refusal(conv, base)
        if reason is not None:
            raise ValueError(reason)
        d = conv.dilation[0]
        self.base, self.inner, self.enter, self.leave = base, d // base, enter, leave
        self.grid = grid if grid is not None else BlockGrid()
        self.conv = conv

    @staticmethod
    def refusal(conv: nn.Module, base: int) -> str | None:
        """Why ``conv`` cannot run on blocks of ``base``, or None when it can."""
        if not isinstance(conv, nn.Conv3d):
            return f"needs a Conv3d, got {type(conv).__name__}"
        d = conv.dilation[0]
        if set(conv.dilation) != {d} or conv.stride != (1, 1, 1) or conv.kernel_size != (3, 3, 3):
            return f"needs a stride-1 3x3x3 convolution with one dilation, got {conv}"
        if conv.padding != (d, d, d):
            return f"needs 'same' padding {d}, got {conv.padding}"
        if d % base:
            return f"dilation {d} is not a multiple of the blocks' base {base}"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        blocks = self._blocks(x) if self.enter else self._zero_padding(x)
        del x
        out = F.conv3d(blocks, conv.weight, conv.bias, 1, self.inner, self.inner)
        del blocks
        return self._unblock(out) if self.leave else out

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        n, c, *size = x.shape
        if n != 1:
            raise ValueError(f"takes a batch of one, got {n}")
        self.grid.size = (size[0], size[1], size[2])
        shape = [-(-s // b) for s in size]
        full = [s * b for s in shape]
        if full != size:
            padded = x.new_zeros((1, c, *full)).contiguous(memory_format=torch.channels_last_3d)
            padded[:, :, : size[0], : size[1], : size[2]] = x
            x = padded
        # (1, C, D, H, W) -> (D', b, H', b, W', b, C) -> (b, b, b, D', H', W', C): one copy; channels last
        blocks = x.permute(0, 2, 3, 4, 1).reshape(shape[0], b, shape[1], b, shape[2], b, c)
        blocks = blocks.permute(1, 3, 5, 0, 2, 4, 6).reshape(b**3, *shape, c)
        return blocks.permute(0, 4, 1, 2, 3)

    def _zero_padding(self, blocks: torch.Tensor) -> torch.Tensor:
        b = self.base
        view = blocks.view(b, b, b, *blocks.shape[1:])  # (b, b, b, C, D', H', W')
        for axis, size in enumerate(self.grid.size):
            first = size - (view.shape[4 + axis] - 1) * b  # offsets >= first are padding in the last plane
            if first < b:
                index: list[slice | int] = [slice(None)] * 7
                index[axis], index[4 + axis] = slice(first, None), -1
                view[tuple(index)] = 0
        return blocks

    def _unblock(self, out: torch.Tensor) -> torch.Tensor:
        b, size = self.base, self.grid.size
        channels, shape = out.shape[1], out.shape[2:]
        full = [s * b for s in shape]
        out = out.permute(0, 2, 3, 4, 1).reshape(b, b, b, *shape, channels)
        out = out.permute(3, 0, 4, 1, 5, 2, 6).reshape(1, *full, channels).permute(0, 4, 1, 2, 3)
        if list(size) != full:
            out = out[:, :, : size[0], : size[1], : size[2]]
        return out


def block_runs(steps: list[nn.Sequential]) -> None:
    """Replace the convolutions of ``steps`` dilated by BLOCK_DILATION or more by SpaceToBatchConv3d, runs of
    consecutive such steps (activations elementwise) sharing one set of blocks."""
    run: list[nn.Sequential] = []
    for step in [*steps, None]:
        conv = step[0] if step is not None and len(step) else None
        fits = (
            isinstance(conv, nn.Conv3d)
            and conv.dilation[0] >= BLOCK_DILATION
            and SpaceToBatchConv3d.refusal(conv, BLOCK_DILATION) is None
        )
        if fits and step is not None:
            run.append(step)
            if all(isinstance(m, ELEMENTWISE) for m in list(step)[1:]):
                continue  # the next step may share the blocks
        grid = BlockGrid()
        for index, member in enumerate(run):
            conv = member[0]
            assert isinstance(conv, nn.Conv3d)
            member[0] = SpaceToBatchConv3d(
                conv, BLOCK_DILATION, enter=index == 0, leave=index == len(run) - 1, grid=grid
            )
        run = []


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

    def step_dtypes(self) -> list[torch.dtype | None]:
        """Each step's compute dtype (that of its weights); None for a step without weights."""
        return [next((p.dtype for p in step.parameters()), None) for step in self.steps]

    def forward_steps(self, x: torch.Tensor) -> Generator[torch.Tensor, None, None]:
        """Run the network one step at a time, yielding the activation after each step.

        The last yielded tensor is the logits. The generator holds only the current activation, so
        memory stays at about two activations; stop iterating to abandon the pass. Each step's input is
        cast to the step's dtype first (see ``models.meshnet.twin.bf16_twin``); a float32 network casts
        nothing.
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
