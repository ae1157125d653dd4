"""nnU-Net's ZScoreNormalization of one channel from its planes: the same float32 mean and std, bit for bit.

nnU-Net (``ZScoreNormalization.run`` on the cropped float32 channel) computes ``image.mean()`` and
``image.std()`` (numpy, float32 accumulation), or with ``use_mask_for_norm`` the same of ``image[mask]``, and
then ``(image - mean) / max(std, 1e-8)`` (on the mask's voxels only). numpy's float32 sums are not exact, so
their value depends on the order numpy adds in; that order is reproduced here from planes, without the
float32 copy of the channel, its masked copy or the ``image - mean`` temporary:

- a C-contiguous float32 array's sum (``np.add.reduce``) is numpy's pairwise summation over all of it:
  halves split at a multiple of 8 down to blocks of at most 128 values. :func:`pairwise_sum` does the same
  splits over a stream of values and lets numpy sum the blocks of at most ``LEAF`` values (the same splits
  inside). This gives the masked mean and std (``image[mask]`` is a new 1D array, in the C order of the
  cropped, transposed channel) and the unmasked std's sum of squares (``image - mean`` is a new array in the
  memory order of nnU-Net's (z, y, x) C-contiguous copy).
- the unmasked mean sums a non-contiguous view (the crop of that copy). numpy's buffered reduction coalesces
  the view's axes where the crop spans a whole axis, then adds the pairwise sums of chunks of the view, one
  after the other into a float32 total: the inner axes that fit in the buffer (``np.getbufsize()`` values)
  whole, times as many of the next axis as fit, not crossing the axis after that (a row longer than the
  buffer: that row). :func:`reduction_chunks` gives those chunks; a test compares them with ``np.nditer``.
- the divisions are numpy's (``float32 / intp`` computed in float64, rounded to float32), the square root
  float32.

Planes are (rows, columns) float32 arrays; a test compares the results with nnU-Net's on real scans. The
order is numpy's (2.3 and later) and not promised by it: :func:`numpy_order_holds` checks it once on small
arrays against numpy itself, and where it does not hold the caller runs nnU-Net's own preprocessing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# Largest block handed to numpy's own pairwise sum (float32 values; 4 MiB); must be >= 128.
LEAF = 1 << 20


class Stream:
    """Consecutive values of a sequence given as pieces (1D float32 arrays), taken front to back."""

    def __init__(self, pieces: Iterable[np.ndarray]) -> None:
        self._pieces: Iterator[np.ndarray] = iter(pieces)
        self._current = np.empty(0, dtype=np.float32)
        self._at = 0

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` values as a C-contiguous float32 1D array."""
        parts: list[np.ndarray] = []
        need = count
        while need > 0:
            if self._at == len(self._current):
                self._current, self._at = np.ascontiguousarray(next(self._pieces), dtype=np.float32), 0
                continue
            k = min(need, len(self._current) - self._at)
            parts.append(self._current[self._at : self._at + k])
            self._at += k
            need -= k
        if not parts:
            return np.empty(0, dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def pairwise_sum(take: Callable[[int], np.ndarray], count: int) -> np.float32:
    """``np.add.reduce`` of the next ``count`` float32 values of ``take`` as one contiguous array: numpy's
    pairwise summation, its splits above ``LEAF`` values done here."""
    if count <= LEAF:
        return np.float32(np.add.reduce(take(count)))
    half = count // 2
    half -= half % 8
    left = pairwise_sum(take, half)
    right = pairwise_sum(take, count - half)
    return np.float32(left + right)


def _coalesced(crop: Sequence[int], full: Sequence[int]) -> list[int]:
    """The axes numpy's iterator sees for the crop ``crop`` of a C-contiguous array of shape ``full``:
    an axis merges into the one outside it while every axis inside it is whole."""
    dims = [int(crop[-1])]
    whole = int(crop[-1]) == int(full[-1])
    for axis in range(len(crop) - 2, -1, -1):
        if whole:
            dims[0] *= int(crop[axis])
        else:
            dims.insert(0, int(crop[axis]))
        whole = int(crop[axis]) == int(full[axis])
    return dims


def reduction_chunks(crop: Sequence[int], full: Sequence[int], buffer: int | None = None) -> Iterator[int]:
    """Lengths, in order, of the consecutive runs (C order of the crop) whose pairwise sums numpy's
    ``np.add.reduce(view, axis=None)`` adds one by one, for ``view`` the crop (shape ``crop``) of a
    C-contiguous array of shape ``full``; ``buffer`` defaults to ``np.getbufsize()``."""
    size = int(buffer if buffer is not None else np.getbufsize())
    dims = _coalesced(crop, full)
    core, k = 1, len(dims)
    while k > 0 and core * dims[k - 1] <= size:
        core *= dims[k - 1]
        k -= 1
    if k == 0:
        yield core
        return
    if k == len(dims):  # one row is over the buffer: numpy adds whole rows, unbuffered
        for _ in range(math.prod(dims[:-1])):
            yield dims[-1]
        return
    step = max(1, size // core)
    run = dims[k - 1]
    for _ in range(math.prod(dims[: k - 1])):
        for start in range(0, run, step):
            yield min(step, run - start) * core


def _divide(total: np.float32, count: int) -> np.float32:
    """numpy's ``_mean``/``_var`` division: a float32 sum over an intp count, in float64, back to float32."""
    return np.float32(total / np.intp(count))


@dataclass(frozen=True)
class ZScore:
    """A channel's statistics as nnU-Net's ZScoreNormalization computes them, and its normalisation."""

    mean: np.float32
    std: np.float32

    def apply(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Normalise a float32 plane (or any float32 array) in place as nnU-Net does and return it; ``mask``
        (same shape, bool): only its voxels, as with use_mask_for_norm."""
        divisor = max(self.std, 1e-8)  # nnU-Net's expression: np.float32, or the Python float 1e-8
        if mask is None:
            values -= self.mean
            values /= divisor
        else:
            values[mask] = (values[mask] - self.mean) / divisor
        return values


def unmasked(plane: Callable[[int], np.ndarray], crop: Sequence[int], full: Sequence[int]) -> ZScore:
    """nnU-Net's mean and std of the crop (shape ``crop``, (z, y, x) in memory order) of its C-contiguous
    float32 (z, y, x) copy of the channel (shape ``full``); ``plane(i)`` is the crop's float32 (y, x)
    plane ``i`` (called twice per plane)."""
    count = math.prod(int(n) for n in crop)
    values = Stream(plane(i).ravel() for i in range(int(crop[0])))
    total = np.float32(0.0)
    for length in reduction_chunks(crop, full):  # a whole uncropped channel is one chunk: summed streamed
        total = np.float32(total + pairwise_sum(values.take, length))
    mean = _divide(total, count)

    def squares(i: int) -> np.ndarray:
        difference = plane(i).ravel() - mean
        difference *= difference
        return difference

    variance = _divide(pairwise_sum(Stream(squares(i) for i in range(int(crop[0]))).take, count), count)
    return ZScore(mean, np.float32(np.sqrt(variance)))


def masked(plane: Callable[[int], np.ndarray], mask: np.ndarray) -> ZScore:
    """nnU-Net's mean and std of ``image[mask]`` (use_mask_for_norm): ``mask`` the (d0, d1, d2) bool mask
    of the cropped, transposed channel, ``plane(i)`` that channel's float32 (d1, d2) plane ``i`` (called
    twice per plane)."""
    count = int(np.count_nonzero(mask))
    depth = int(mask.shape[0])
    total = pairwise_sum(Stream(plane(i)[mask[i]] for i in range(depth)).take, count)
    mean = _divide(total, count)

    def squares(i: int) -> np.ndarray:
        difference = plane(i)[mask[i]] - mean
        difference *= difference
        return difference

    variance = _divide(pairwise_sum(Stream(squares(i) for i in range(depth)).take, count), count)
    return ZScore(mean, np.float32(np.sqrt(variance)))


def _plane(volume: np.ndarray, i: int) -> np.ndarray:
    """Plane ``i`` of ``volume`` as a C-contiguous array."""
    return np.ascontiguousarray(volume[i])


@functools.cache
def numpy_order_holds() -> bool:
    """Whether this numpy sums in the order reproduced here: the statistics of a few crops (each branch of
    :func:`reduction_chunks`, Cauchy values so that another order would round differently) and a pairwise
    sum over several leaves, against numpy's own. Checked once per process (about 0.2 s)."""
    rng = np.random.default_rng(17)
    crops = [
        ((6, 40, 300), (5, 30, 290)),  # rows within planes
        ((9, 30, 91), (9, 28, 91)),  # whole planes
        ((2, 3, 9000), (2, 2, 8999)),  # rows over the buffer
        ((3, 20, 21), (3, 20, 21)),  # all at once
        ((9, 50, 81), (7, 50, 80)),  # rows across planes (planes coalesced)
    ]
    for full, crop in crops:
        volume = (rng.standard_cauchy(size=full) * 30).astype(np.float32)
        view = volume[tuple(slice(0, n) for n in crop)]
        got = unmasked(functools.partial(_plane, view), crop, full)
        if (got.mean, got.std) != (view.mean(), view.std()):
            return False
    values = (rng.standard_cauchy(size=2 * LEAF + 77) * 30).astype(np.float32)
    return bool(pairwise_sum(Stream([values]).take, values.size) == np.add.reduce(values))
