"""One pass over a prediction and its reference: the joint label histogram and every label's bounding box.

The overlap metrics need the histogram (the confusion matrix), the surface metrics the boxes; `scan` gives
both from one read of each voxel (`evaluation.kernels.scan_labels`), split along the first axis over the
available cores (`workers()`), each thread with its own histogram and boxes, summed at the end.

Arrays of 1 to 3 dimensions are handled as 3D views (`View`): a 2D array is (rows, 1, columns), a 1D one
(1, 1, n). An array that is Fortran-ordered (as nibabel often returns them) is read through its transpose,
so the loops always run along memory; `View.axes` maps the view's axes back to the array's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def kernels() -> Any:
    """The `evaluation.kernels` module, imported at the first metric computed: importing numba costs about
    1 s and 100 MiB, which a worker that never evaluates need not pay."""
    from evaluation import kernels as module

    return module


# Below this many voxels a second thread costs more than it saves.
PARALLEL_VOXELS = 1 << 20
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def workers() -> int:
    """Threads the metrics use: the cores this process may run on (at most 8)."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(8, os.cpu_count() or 1))


def run_all(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Results of ``tasks`` (functions that release the GIL for most of their time), run on `workers()`
    threads; in this thread when there is one task or one core. The pool is made once per process (a
    forked child makes its own)."""
    global _pool
    if len(tasks) <= 1 or workers() == 1:
        return [task() for task in tasks]
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(workers(), thread_name_prefix="metrics"))
        pool = _pool[1]
    return [f.result() for f in [pool.submit(task) for task in tasks]]


@dataclass(frozen=True)
class View:
    """3D view of an array of 1 to 3 dimensions; ``axes[j]`` is the array axis of view axis j (-1: added)."""

    array: np.ndarray
    axes: tuple[int, int, int]

    def box_to_array(self, box: Sequence[int] | np.ndarray) -> tuple[slice, ...]:
        """(start, stop) pairs along the view's axes, as slices along the array's axes."""
        ndim = sum(a >= 0 for a in self.axes)
        out: list[slice] = [slice(0, 0)] * ndim
        for j, a in enumerate(self.axes):
            if a >= 0:
                out[a] = slice(int(box[2 * j]), int(box[2 * j + 1]))
        return tuple(out)

    def active(self) -> np.ndarray:
        """(3,) int64: 1 for the view's axes that are the array's, 0 for an added one (no neighbours)."""
        return np.array([a >= 0 for a in self.axes], dtype=np.int64)

    def spacing(self, spacing_mm: Sequence[float]) -> np.ndarray:
        """Voxel size (mm, float64) along the view's axes; 1 along an added axis (one voxel thick)."""
        return np.array([float(spacing_mm[a]) if a >= 0 else 1.0 for a in self.axes], dtype=np.float64)


def views(prediction: np.ndarray, reference: np.ndarray) -> tuple[View, View]:
    """3D views of two arrays of one shape (1 to 3 dimensions), both read along memory where possible."""
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    if not 1 <= prediction.ndim <= 3:
        raise ValueError(f"label arrays must have 1 to 3 dimensions, got {prediction.ndim}")
    pred, ref = _integers(prediction), _integers(reference)
    axes = list(range(pred.ndim))
    fortran = all(a.flags.f_contiguous and not a.flags.c_contiguous for a in (pred, ref))
    if fortran:
        pred, ref, axes = pred.T, ref.T, axes[::-1]
    if len(axes) == 2:  # (rows, 1, columns): rows still split over threads
        pred, ref, axes = pred[:, None, :], ref[:, None, :], [axes[0], -1, axes[1]]
    elif len(axes) == 1:
        pred, ref, axes = pred[None, None, :], ref[None, None, :], [-1, -1, axes[0]]
    return View(pred, (axes[0], axes[1], axes[2])), View(ref, (axes[0], axes[1], axes[2]))


def _integers(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"label arrays must hold integers, got {array.dtype}")
    return array


@dataclass(frozen=True)
class Scan:
    """What one pass found: ``hist`` (n, n) int64 joint histogram ([p, r] = voxels predicted p whose
    reference is r; n may be 0), boxes per value < m of each side (`kernels.scan_labels`), the smallest and
    largest value met in either array, and the voxels whose pair is not in ``hist``."""

    hist: np.ndarray
    box_pred: np.ndarray
    box_ref: np.ndarray
    low: int
    high: int
    outside: int

    def union_box(self, value: int) -> np.ndarray | None:
        """(start, stop) along each view axis of the union of ``value``'s boxes; None if empty in both."""
        a, b = self.box_pred[value], self.box_ref[value]
        if a[1] < 0 and b[1] < 0:
            return None
        lows = np.minimum(a[0::2], b[0::2])
        highs = np.maximum(a[1::2], b[1::2]) + 1
        return np.stack([lows, highs], axis=1).reshape(-1)


def scan(pred: View, ref: View, n_hist: int, n_box: int) -> Scan:
    """`kernels.scan_labels` over the whole of two views, on `workers()` threads for large arrays."""
    shape = pred.array.shape
    rows = shape[0]
    parts = 1 if pred.array.size < PARALLEL_VOXELS else min(workers(), rows)
    cuts = [rows * i // parts for i in range(parts + 1)]

    def part(z0: int, z1: int) -> tuple[np.ndarray, ...]:
        hist = np.zeros((n_hist, n_hist), dtype=np.int64)
        boxes = [np.empty((n_box, 6), dtype=np.int64) for _ in range(2)]
        for box in boxes:
            box[:, 0::2] = np.iinfo(np.int64).max
            box[:, 1::2] = -1
        seen = np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0], dtype=np.int64)
        kernels().scan_labels(pred.array, ref.array, z0, z1, hist, boxes[0], boxes[1], seen)
        return hist, boxes[0], boxes[1], seen

    results = run_all([_bind(part, cuts[i], cuts[i + 1]) for i in range(parts)])
    hist = sum((r[0] for r in results[1:]), results[0][0])
    box_pred, box_ref = (_merge_boxes([r[k] for r in results]) for k in (1, 2))
    seen = np.stack([r[3] for r in results])
    return Scan(hist, box_pred, box_ref, int(seen[:, 0].min()), int(seen[:, 1].max()), int(seen[:, 2].sum()))


def _bind(fn: Callable[[int, int], T], a: int, b: int) -> Callable[[], T]:
    return lambda: fn(a, b)


def _merge_boxes(boxes: Iterable[np.ndarray]) -> np.ndarray:
    stack = np.stack(list(boxes))
    out: np.ndarray[Any, Any] = np.empty_like(stack[0])
    out[:, 0::2] = stack[:, :, 0::2].min(axis=0)
    out[:, 1::2] = stack[:, :, 1::2].max(axis=0)
    return out
