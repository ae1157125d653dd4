"""MeshNet: a chain of dilated 3D convolutions, built from a parsed TF.js layers-model.

The network is fully convolutional with stride 1, so any input size works and the output has the input's
spatial shape. Each "step" is one Conv3d (plus instance normalisation for brainchop's
``_gn`` layers) and the activation that follows it; :meth:`MeshNet.forward_steps`
yields after every step so a caller can report progress and stop early.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Generator

import torch
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
        in between hold nearly all the work. Input and output stay float32 tensors.
        """
        twin = copy.deepcopy(self)
        for index in range(1, len(twin.steps) - 1):
            twin.steps[index].to(torch.bfloat16)
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
