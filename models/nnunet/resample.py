"""nnU-Net's spline resampling (skimage ``resize`` -> ``scipy.ndimage.zoom``) in bounded memory, same values.

nnU-Net resamples with ``skimage.transform.resize(image.astype(float64), shape, order, mode="edge",
anti_aliasing=False)``, which calls ``scipy.ndimage.zoom(..., mode="nearest", grid_mode=True)`` and clips to
the image's range. For order 3 on a whole (z, y, x) volume scipy holds the float64 image, a copy padded by 12
voxels per side (``np.pad(..., "edge")``) and the spline coefficients of that copy, float64 too: 26 bytes per
input voxel. Here the same numbers come out a plane at a time:

- :func:`zoom_cubic_planes`: order 3, the coefficients computed one z plane at a time. scipy's prefilter runs
  the recursive B-spline filter along z, then y, then x, on each whole line (``apply_filter`` with the
  "nearest" mode's boundary rule, which is its "reflect" initialisation: causal sum over the whole line,
  anticausal ``c[n-1] * z / (z - 1)``). Along z this is done here on whole planes at once with the same
  float64 operations in the same order (numpy's elementwise ``+``/``*`` are the C code's), keeping the
  causal pass's planes only at every K-th plane and recomputing each segment of K planes for the
  anticausal pass (K about sqrt(planes)): 2 sqrt(n) planes held instead of n. Along y and x it is scipy's own
  ``spline_filter1d`` on each finished plane (the same lines). The interpolation is scipy's: per output
  plane the 4 x 4 x 4 coefficients times the weights of ``get_spline_interpolation_weights``, each term
  ``((c * wz) * wy) * wx`` added in scipy's order (x fastest) from 0.0. Output planes come in decreasing z.
- :func:`zoom_slab`: any order, a slab of output planes of ``ndimage.zoom`` on a small input (the logits on
  the model's grid, for the export): scipy's own ``zoom_shift`` with the slab's first plane as shift, which
  the C code adds to the output index before zooming, so each voxel's coordinate and value are the same.

The tests compare both with skimage/scipy on random and real volumes (all values equal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage

# scipy's pole of the cubic B-spline prefilter (sqrt(3) - 2, ni_splines.c) and its prepadding for "nearest"
POLE = -0.267949192431122706472553658494127633
NPAD = 12


def zoom_shape(shape: Sequence[int], new_shape: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray]:
    """(output shape, zoom factors) as skimage's resize and ndimage.zoom compute them (grid mode)."""
    factors = np.divide(np.asarray(shape), np.asarray(new_shape))
    zoom_factors = [1 / f for f in factors]
    out = tuple(int(round(i * z)) for i, z in zip(shape, zoom_factors, strict=True))  # noqa: RUF046 (scipy's)
    zoom = np.divide(
        np.array(shape), np.array(out), out=np.ones(len(shape), dtype=np.float64), where=np.array(out) != 0
    )
    return out, np.ascontiguousarray(zoom)


def _cubic_weights(cc: float) -> tuple[int, tuple[float, float, float, float]]:
    """First coefficient index and the 4 weights of scipy's cubic spline at coordinate ``cc``."""
    start = math.floor(cc) - 1
    x = cc - math.floor(cc)
    z = 1.0 - x
    w1 = (x * x * (x - 2.0) * 3.0 + 4.0) / 6.0
    w2 = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0
    w0 = z * z * z / 6.0
    w3 = 1.0
    for w in (w0, w1, w2):
        w3 -= w
    return start, (w0, w1, w2, w3)


def _axis_table(size: int, out_size: int, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output index along one axis: first coefficient index (in the padded array) and weights (n, 4)."""
    starts, weights = [], []
    for k in range(out_size):
        cc = float(k)
        cc += 0.5
        cc *= zoom
        cc -= 0.5
        cc += float(NPAD)
        start, w = _cubic_weights(cc)
        starts.append(start)
        weights.append(w)
    return np.array(starts, dtype=np.intp), np.array(weights, dtype=np.float64).reshape(out_size, 4)


def _interpolate(
    planes: dict[int, np.ndarray],
    start: int,
    wz: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """One output plane: scipy's sum over the 4 x 4 x 4 coefficients, in its order."""
    (sy, wy), (sx, wx) = rows, cols
    out = np.zeros((len(sy), len(sx)), dtype=np.float64)
    for a in range(4):
        plane = planes[start + a]
        for b in range(4):
            picked = plane[sy + b]
            for c in range(4):
                term = picked[:, sx + c] * wz[a]
                term *= wy[:, b][:, None]
                term *= wx[:, c][None, :]
                out += term
    return out


def zoom_cubic_planes(
    plane: Callable[[int], np.ndarray], shape: Sequence[int], new_shape: Sequence[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """``ndimage.zoom(volume, order=3, mode="nearest", grid_mode=True)`` to ``new_shape`` (as skimage's resize
    asks it), one output plane at a time: yields (z index, float64 (y, x) plane), z decreasing.

    Args:
        plane: the input's z plane ``i`` (0 <= i < shape[0]) as a 2D array (any real dtype; converted to
            float64 as scipy does); called several times per plane.
        shape: the input's (z, y, x) shape; ``new_shape`` the output's, which must be what ``zoom_shape``
            gives for it (the caller checks).
    """
    out_shape, zoom = zoom_shape(shape, new_shape)
    n0 = int(shape[0])
    n = n0 + 2 * NPAD
    z = POLE
    gain = 1.0
    gain *= (1.0 - z) * (1.0 - 1.0 / z)

    def gained(p: int) -> np.ndarray:
        """Padded plane p of the prepadded volume, times the filter's gain (apply_filter's first step)."""
        src = np.asarray(plane(min(max(p - NPAD, 0), n0 - 1)), dtype=np.float64)
        padded = np.pad(src, NPAD, mode="edge")
        padded *= gain
        return padded

    # causal initialisation ("reflect" rule): c0 = g0 + z^n g[n-1] + sum_i z^i (g[i] + z^n g[n-1-i]), ...
    z_n = z**n
    first = gained(0)
    c0 = first + z_n * gained(n - 1)
    z_i = z
    for i in range(1, n):
        c0 += z_i * (gained(i) + z_n * gained(n - 1 - i))
        z_i *= z
    c0 *= z / (1 - z_n * z_n)
    c0 += first
    del first
    # causal pass, keeping every segment-th plane
    segment = max(2, math.isqrt(n))
    checkpoints = {0: c0}
    previous = c0
    for p in range(1, n):
        current = gained(p)
        current += z * previous
        if p % segment == 0:
            checkpoints[p] = current
        previous = current
    last = previous * (z / (z - 1))  # anticausal initialisation ("reflect" rule)
    del previous, current
    tables = [_axis_table(int(shape[a]), out_shape[a], float(zoom[a])) for a in range(3)]
    starts0, weights0 = tables[0]
    filtered: dict[int, np.ndarray] = {}
    o = out_shape[0] - 1
    coefficient = last
    for s in sorted(checkpoints, reverse=True):
        stop = min(s + segment, n)
        causal = [checkpoints.pop(s)]
        for p in range(s + 1, stop):
            current = gained(p)
            current += z * causal[-1]
            causal.append(current)
        for p in range(stop - 1, s - 1, -1):
            coefficient = last if p == n - 1 else z * (coefficient - causal[p - s])
            causal.pop()
            done = ndimage.spline_filter1d(coefficient, 3, axis=0, output=np.float64, mode="nearest")
            ndimage.spline_filter1d(done, 3, axis=1, output=done, mode="nearest")
            filtered[p] = done
            while o >= 0 and starts0[o] >= p:
                yield o, _interpolate(filtered, int(starts0[o]), weights0[o], tables[1], tables[2])
                o -= 1
            keep_below = int(starts0[o]) + 4 if o >= 0 else -1
            for q in [q for q in filtered if q >= keep_below]:
                del filtered[q]


def zoom_slab(
    data: np.ndarray, new_shape: Sequence[int], order: int, start: int, stop: int, prefiltered: bool
) -> np.ndarray:
    """Output planes ``start:stop`` (float64) of ``ndimage.zoom(data, ..., order, mode="nearest",
    grid_mode=True)`` to ``new_shape`` (as skimage's resize asks it), without the rest of the output.

    ``data`` is the input itself (order <= 1), or for order > 1 its coefficients as ``prefilter`` gives them.
    """
    from scipy.ndimage import _nd_image, _ni_support

    npad = NPAD if prefiltered else 0
    out_shape, zoom = zoom_shape([n - 2 * npad for n in data.shape], new_shape)
    out = np.empty((stop - start, *out_shape[1:]), dtype=np.float64)
    shift = np.zeros(data.ndim, dtype=np.float64)
    shift[0] = float(start)
    mode = _ni_support._extend_mode_to_code("nearest")
    _nd_image.zoom_shift(data, zoom, shift, out, order, mode, 0.0, npad, True)
    return out


def prefilter(data: np.ndarray, order: int) -> np.ndarray:
    """The coefficients ``ndimage.zoom`` interpolates for ``order`` > 1 and mode "nearest" (its own code)."""
    padded = np.pad(np.asarray(data), NPAD, mode="edge")
    return np.asarray(ndimage.spline_filter(padded, order, output=np.float64, mode="nearest"))
