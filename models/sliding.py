"""Sliding-window inference that returns labels, with a bounded stitching buffer.

Window positions, padding and the Gaussian importance map are MONAI's (``dense_patch_slices``,
``compute_importance_map``, the scan interval and symmetric zero padding of
``monai.inferers.sliding_window_inference``), so the argmax agrees with
``sliding_window_inference(..., mode="gaussian").argmax(1)``.

Memory: MONAI keeps weighted logits of every class for the whole volume (C x X x Y x Z float32: 5.9 GB
for 14 classes on 512 x 512 x 400). Here windows are visited slab by slab along one axis (the one that
gives the smallest slab), and the weighted logits are kept only for the current slab of ``roi`` voxels
along that axis: once every window starting at ``s_i`` is in, no later window touches voxels before
``s_{i+1}``, so those voxels are final; they are reduced to labels (argmax) and the buffer moves on.
Peak stitching memory is C x roi_a x Y x Z x (4 or 2) bytes plus the uint8 labels. The argmax needs no
division by the summed weights (the same positive number for every class of a voxel), so no weight
buffer is kept either. The buffer is float32 when it fits ``float32_budget_bytes``, else float16 (logits
of a few tens at most, so float16's 11-bit mantissa changes the argmax only at near-ties).

Multi-channel inputs (e.g. BraTS's 4 MRI sequences) come as a list of (X, Y, Z) arrays, never stacked
into one full-size copy; each window is stacked to (C, *roi). Sigmoid (multi-label) outputs are blended
the same way and reduced per voxel to the bits of the channels whose blended logit is > 0: MONAI divides
the weighted logits by the summed weights, applies the sigmoid and thresholds at 0.5, and
sigmoid(s / w) > 0.5 exactly when s > 0 for a positive weight w, so again no weight buffer is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices

from models.card import Cancelled
from models.regions import region_bits_dtype

Network = Callable[[torch.Tensor], torch.Tensor]
IntensityFn = Callable[[np.ndarray], np.ndarray]

FLOAT32_BUDGET_BYTES = 512 << 20


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's window step per axis: ``int(roi * (1 - overlap))`` (at least 1), ``roi`` if it fits exactly."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    out = []
    for size, roi in zip(image_size, roi_size, strict=True):
        out.append(int(roi) if roi == size else max(int(roi * (1 - overlap)), 1))
    return tuple(out)


def slab_axis(padded: Sequence[int], roi_size: Sequence[int]) -> int:
    """The axis whose slab (roi along it x the full other two axes) is smallest; the first on ties."""
    sizes = [roi_size[a] * int(np.prod([padded[b] for b in range(3) if b != a])) for a in range(3)]
    return int(np.argmin(sizes))


def stitch_buffer(
    shape: Sequence[int],
    roi_size: Sequence[int],
    num_classes: int,
    float32_budget_bytes: int = FLOAT32_BUDGET_BYTES,
    accumulate_dtype: torch.dtype | None = None,
) -> tuple[int, tuple[int, int, int, int], torch.dtype]:
    """The stitching buffer for an image: (slab axis, buffer shape (C, roi_a, *other padded), dtype).

    Its size, C x roi_a x Y x Z x itemsize, is the bound on stitching memory (plus the uint8 labels).
    """
    padded = tuple(max(int(n), int(r)) for n, r in zip(shape, roi_size, strict=True))
    axis = slab_axis(padded, roi_size)
    others = [padded[a] for a in range(3) if a != axis]
    buffer_shape = (num_classes, int(roi_size[axis]), others[0], others[1])
    nbytes = int(np.prod(buffer_shape)) * 4
    dtype = accumulate_dtype or (torch.float32 if nbytes <= float32_budget_bytes else torch.float16)
    return axis, buffer_shape, dtype


def as_channels(image: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """An (X, Y, Z) array, a (C, X, Y, Z) array or C arrays (X, Y, Z) as a list of C same-shape 3D arrays."""
    channels = [image] if isinstance(image, np.ndarray) and image.ndim == 3 else list(image)
    if not channels or any(c.ndim != 3 or c.shape != channels[0].shape for c in channels):
        shapes = [tuple(c.shape) for c in channels]
        raise ValueError(f"image must be 3D (X, Y, Z) or channels of one 3D shape, got shapes {shapes}")
    return channels


@torch.inference_mode()
def sliding_window_labels(
    image: np.ndarray | Sequence[np.ndarray],
    network: Network,
    *,
    num_classes: int,
    activation: Literal["softmax", "sigmoid"] = "softmax",
    roi_size: Sequence[int],
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    intensity: IntensityFn | None = None,
    device: torch.device | str = "cpu",
    accumulate_dtype: torch.dtype | None = None,
    float32_budget_bytes: int = FLOAT32_BUDGET_BYTES,
    on_window: Callable[[int, int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Segment a 3D image window by window.

    Args:
        image: (X, Y, Z), or C input channels: (C, X, Y, Z) or a sequence of C (X, Y, Z) arrays; any real
            dtype, on the model's grid.
        network: maps float32 (B, C, *roi_size) to logits (B, num_classes, *roi_size); called under the
            caller's grad / autocast mode.
        num_classes: channels the network returns.
        activation: "softmax": labels are the argmax; "sigmoid": each channel is a region of its own and
            the result holds, per voxel, bit c set where channel c's blended logit is > 0.
        intensity: applied to each window's float32 voxels (C, *window) before padding (e.g. CT
            windowing); padding is 0 afterwards, as in MONAI (which pads the pre-processed image).
        accumulate_dtype: stitching buffer dtype; None picks float32 within ``float32_budget_bytes``.
        on_window: called with (windows done, windows total) after each batch of windows.
        is_cancelled: checked before each batch of windows.

    Returns:
        softmax: labels (X, Y, Z), uint8 for up to 256 classes, else int16 (argmax of the blended
        logits). sigmoid: region bits (X, Y, Z), uint8 for up to 8 channels, else uint16.

    Raises:
        Cancelled: ``is_cancelled()`` returned True.
    """
    channels = as_channels(image)
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be 3 positive ints, got {roi_size!r}")
    shape = channels[0].shape
    padded = tuple(max(n, r) for n, r in zip(shape, roi, strict=True))
    pad_low = tuple((p - n) // 2 for n, p in zip(shape, padded, strict=True))
    windows = dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap))
    total = len(windows)

    # Work with the slab axis first: t_* are in that (transposed) order, the network sees the original.
    axis, buffer_shape, dtype = stitch_buffer(shape, roi, num_classes, float32_budget_bytes, accumulate_dtype)
    order = (axis, *(a for a in range(3) if a != axis))
    t_padded = tuple(padded[a] for a in order)
    weights = compute_importance_map(roi, mode=blend, sigma_scale=sigma_scale, dtype=torch.float32)
    t_weights = weights.permute(order).contiguous()
    buffer = torch.zeros(buffer_shape, dtype=dtype)
    if activation == "sigmoid":
        label_dtype: type[np.integer] = region_bits_dtype(num_classes)
    else:
        label_dtype = np.uint8 if num_classes <= 256 else np.int16
    labels = np.zeros(shape, dtype=label_dtype)
    t_labels = labels.transpose(order)  # a view: writing into it fills ``labels``

    rows: dict[int, list[tuple[slice, ...]]] = {}
    for window in windows:
        rows.setdefault(window[axis].start, []).append(window)
    starts = sorted(rows)
    done = 0
    for row, start in enumerate(starts):
        row_windows = rows[start]
        for first in range(0, len(row_windows), sw_batch_size):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled()
            batch = row_windows[first : first + sw_batch_size]
            patches = np.stack([_patch(channels, w, pad_low, intensity) for w in batch])
            x = torch.from_numpy(patches).to(device)
            logits = network(x)
            del x
            if logits.shape[1] != num_classes or tuple(logits.shape[2:]) != roi:
                raise ValueError(
                    f"network returned shape {tuple(logits.shape)}, expected (B, {num_classes}, *{roi})"
                )
            for index, window in enumerate(batch):
                t_out = logits[index].to("cpu", torch.float32).permute(0, *(a + 1 for a in order))
                t_out.mul_(t_weights)
                t_window = [window[a] for a in order]
                buffer[:, :, t_window[1], t_window[2]] += t_out
            del logits
            done += len(batch)
            if on_window is not None:
                on_window(done, total)
        end = starts[row + 1] if row + 1 < len(starts) else t_padded[0]
        _finalise(
            buffer,
            start,
            end,
            pad_low[axis],
            shape[axis],
            t_labels,
            [pad_low[a] for a in order[1:]],
            activation,
        )
        _shift(buffer, end - start)
    return labels


def _patch(
    channels: list[np.ndarray],
    window: tuple[slice, ...],
    pad_low: Sequence[int],
    intensity: IntensityFn | None,
) -> np.ndarray:
    """The float32 window (C, *roi) of the padded, intensity-mapped channels; 0 outside the image."""
    inner, target = [], []
    for s, low, n in zip(window, pad_low, channels[0].shape, strict=True):
        lo, hi = max(s.start - low, 0), min(s.stop - low, n)
        inner.append(slice(lo, hi))
        target.append(slice(lo + low - s.start, hi + low - s.start))
    # A copy (`intensity` may work in place), stacked per window: the channels are never stacked whole.
    data = np.stack([np.asarray(c[tuple(inner)], dtype=np.float32) for c in channels])
    if intensity is not None:
        data = intensity(data)
    roi = (len(channels), *(s.stop - s.start for s in window))
    if data.shape == roi:
        return np.ascontiguousarray(data, dtype=np.float32)
    out = np.zeros(roi, dtype=np.float32)
    out[(slice(None), *target)] = data
    return out


def _finalise(
    buffer: torch.Tensor,
    start: int,
    end: int,
    pad_low: int,
    size: int,
    t_labels: np.ndarray,
    other_pad_low: Sequence[int],
    activation: str = "softmax",
) -> None:
    """Buffer slices [0, end - start) (padded coords start..end) into the unpadded labels: their argmax
    (softmax), or the bits of the channels with a positive weighted logit (sigmoid)."""
    lo, hi = max(start, pad_low), min(end, pad_low + size)
    if hi <= lo:
        return
    b1, b2 = other_pad_low
    n1, n2 = t_labels.shape[1], t_labels.shape[2]
    block = buffer[:, lo - start : hi - start, b1 : b1 + n1, b2 : b2 + n2]
    if activation == "sigmoid":
        bits = np.zeros(block.shape[1:], dtype=t_labels.dtype)
        for channel in range(block.shape[0]):
            bits |= (block[channel] > 0).numpy().astype(t_labels.dtype) << channel
        t_labels[lo - pad_low : hi - pad_low] = bits
        return
    t_labels[lo - pad_low : hi - pad_low] = block.argmax(dim=0).numpy().astype(t_labels.dtype)


def _shift(buffer: torch.Tensor, step: int) -> None:
    """Move the buffer ``step`` slices towards 0 along axis 1 and zero the freed tail, in place.

    Slice by slice (each copy reads a later slice into an earlier one, never overlapping), so no second
    buffer is needed.
    """
    depth = buffer.shape[1]
    step = min(step, depth)
    for j in range(depth - step):
        buffer[:, j].copy_(buffer[:, j + step])
    buffer[:, depth - step :].zero_()
