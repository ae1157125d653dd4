"""Compiled loops (numba) behind the metrics: one pass over two label maps, surface voxels, nearest distances.

numpy needs a full-size temporary for each step of these (combined index, masks, coordinates); a loop that
reads each voxel once keeps them at the memory-bandwidth floor and needs no temporary of the volume's size.
All functions release the GIL (`nogil`), so callers can run them on several threads, and compile once per
argument type (cached on disk: see `_jit`).

Arrays are 3D here; callers view 1D and 2D arrays as 3D (see `evaluation.scan`). Indices and boxes are
in the array's own axis order. Bit masks hold one bit per voxel of a box, packed along its last axis
(voxel x of a row is bit ``x & 7`` of byte ``x >> 3``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np


def _jit(fn: Callable[..., Any]) -> Any:
    """``numba.njit`` without the GIL, cached on disk where numba finds a writable place (next to this
    file, $NUMBA_CACHE_DIR, or the user's cache directory); without a cache (compiled again in each
    process, a few seconds) where none is writable, rather than failing at import."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(fn)


@_jit
def _grow(box, v, z, y, x0, x1) -> None:  # type: ignore[no-untyped-def]
    if z < box[v, 0]:
        box[v, 0] = z
    if z > box[v, 1]:
        box[v, 1] = z
    if y < box[v, 2]:
        box[v, 2] = y
    if y > box[v, 3]:
        box[v, 3] = y
    if x0 < box[v, 4]:
        box[v, 4] = x0
    if x1 - 1 > box[v, 5]:
        box[v, 5] = x1 - 1


@_jit
def _flush(p, r, z, y, x0, x1, hist, box_p, box_r, seen) -> None:  # type: ignore[no-untyped-def]
    # one run of voxels [x0, x1) of row (z, y) with prediction p and reference r
    n_hist, n_box = hist.shape[0], box_p.shape[0]
    if 0 <= p < n_hist and 0 <= r < n_hist:
        hist[p, r] += x1 - x0
    else:
        seen[2] += x1 - x0
    seen[0] = min(seen[0], p, r)
    seen[1] = max(seen[1], p, r)
    if 0 <= p < n_box:
        _grow(box_p, p, z, y, x0, x1)
    if 0 <= r < n_box:
        _grow(box_r, r, z, y, x0, x1)


@_jit
def scan_labels(pred, ref, z0, z1, hist, box_p, box_r, seen) -> None:  # type: ignore[no-untyped-def]
    """Joint histogram and per-value bounding boxes of rows z0..z1 (first axis) of two 3D label arrays.

    Adds to ``hist`` (n, n) int64: [p, r] counts voxels with prediction p and reference r, for p, r < n.
    ``box_p``, ``box_r`` (m, 6) int64: per value < m, inclusive (low, high) index along axes 0, 1, 2; values
    not yet seen hold (max int64, -1). ``seen`` (3,) int64: smallest and largest value met, and the number
    of voxels whose pair fell outside [0, n) (not in ``hist``; n may be 0 where only boxes are wanted).
    Works on runs of equal (p, r) along the last axis, so the histogram and boxes are touched once per
    run, not once per voxel.
    """
    ny, nx = pred.shape[1], pred.shape[2]
    if nx == 0:
        return
    # Per row, a first loop that the compiler vectorises flags where (p, r) changes; a second one visits
    # the flags 8 at a time, so a run costs a few instructions per 8 voxels.
    change = np.zeros((nx + 7) // 8 * 8, dtype=np.uint8)
    words = change.view(np.uint64)
    for z in range(z0, z1):
        for y in range(ny):
            prow, rrow = pred[z, y], ref[z, y]
            # slices indexed from 0: no negative-index handling left to stop the vectoriser
            p1, p0, r1, r0, c = prow[1:], prow[: nx - 1], rrow[1:], rrow[: nx - 1], change[1:nx]
            for i in range(nx - 1):
                c[i] = (p1[i] != p0[i]) | (r1[i] != r0[i])
            start = 0
            for w in range(words.size):
                if words[w] == 0:
                    continue
                for x in range(w * 8, min(w * 8 + 8, nx)):
                    if change[x]:
                        _flush(
                            np.int64(prow[start]),
                            np.int64(rrow[start]),
                            z,
                            y,
                            start,
                            x,
                            hist,
                            box_p,
                            box_r,
                            seen,
                        )
                        start = x
            _flush(np.int64(prow[start]), np.int64(rrow[start]), z, y, start, nx, hist, box_p, box_r, seen)


@_jit
def edge_bits(labels, region, lut, boxes, starts, active, bits, counts) -> None:  # type: ignore[no-untyped-def]
    """Marks the surface voxels of several structures within ``region`` (6,) int64 (start, stop along axes
    0, 1, 2), each in its box's bit mask.

    ``lut`` (m,) int64: for a label value < m, its structure's index k, or -1 (not wanted). Structure k has
    ``boxes[k]`` (start, stop along axes 0, 1, 2) and its bit mask, (Z, Y, ceil(X / 8)) for the box's
    shape, at ``bits[starts[k]:]`` (zeroed uint8); ``counts[k]`` grows by its surface voxels marked.
    ``active`` (3,) int64: 0 for an axis that is not the array's (a 2D array viewed as 3D), whose
    neighbours do not exist. A surface voxel has the value and a face neighbour without it, outside the
    array counting as without (a face-connected erosion removes it; MONAI's ``get_mask_edges``).
    Neighbours are read from the whole array, so the result does not depend on the box as long as it holds
    the structure. Rows of different z touch different bytes: threads may share ``bits`` given disjoint
    z ranges and their own ``counts``.
    """
    nz, ny, nx = labels.shape
    m = lut.shape[0]
    xa, xb = region[4], region[5]
    # Per row, a first loop that the compiler vectorises flags the voxels of any label that differ from a
    # face neighbour; a second one visits the flags 8 at a time and keeps the wanted labels.
    flag = np.zeros((nx + 7) // 8 * 8, dtype=np.uint8)
    words = flag.view(np.uint64)
    lo, hi = max(xa, 1), min(xb, nx - 1)
    for z in range(region[0], region[1]):
        for y in range(region[2], region[3]):
            row = labels[z, y]
            if (active[0] != 0 and (z == 0 or z == nz - 1)) or (active[1] != 0 and (y == 0 or y == ny - 1)):
                for x in range(xa, xb):
                    flag[x] = row[x] != 0
            else:
                up = labels[z, y - 1] if active[1] != 0 else row
                down = labels[z, y + 1] if active[1] != 0 else row
                front = labels[z - 1, y] if active[0] != 0 else row
                back = labels[z + 1, y] if active[0] != 0 else row
                # slices indexed from 0: no negative-index handling left to stop the vectoriser
                c, left, right, f = row[lo:hi], row[lo - 1 : hi - 1], row[lo + 1 : hi + 1], flag[lo:hi]
                u, d, fr, bk = up[lo:hi], down[lo:hi], front[lo:hi], back[lo:hi]
                for i in range(hi - lo):
                    v = c[i]
                    f[i] = (v != 0) & (
                        (v != left[i])
                        | (v != right[i])
                        | (v != u[i])
                        | (v != d[i])
                        | (v != fr[i])
                        | (v != bk[i])
                    )
                if xa == 0:
                    flag[0] = row[0] != 0
                if xb == nx:
                    flag[nx - 1] = row[nx - 1] != 0
            for w in range(xa >> 3, (xb + 7) >> 3):
                if words[w] == 0:
                    continue
                for x in range(max(w * 8, xa), min(w * 8 + 8, xb)):
                    if not flag[x]:
                        continue
                    value = row[x]
                    if value < 0 or value >= m:
                        continue
                    k = lut[value]
                    if k < 0:
                        continue
                    bz, by, bx = z - boxes[k, 0], y - boxes[k, 2], x - boxes[k, 4]
                    row_bytes = (boxes[k, 5] - boxes[k, 4] + 7) >> 3
                    at = starts[k] + (bz * (boxes[k, 3] - boxes[k, 2]) + by) * row_bytes + (bx >> 3)
                    bits[at] |= np.uint8(1 << (bx & 7))
                    counts[k] += 1


@_jit
def _bit(bits, z, y, x) -> bool:  # type: ignore[no-untyped-def]
    return (bits[z, y, x >> 3] >> (x & 7)) & 1 == 1


@_jit
def directed_distances(src, dst, shape, spacing, offsets, offset_d2, out) -> int:  # type: ignore[no-untyped-def]
    """Distance (mm) from each marked voxel of ``src`` to the nearest marked voxel of ``dst``.

    ``src``, ``dst``: bit masks of one box of ``shape`` (Z, Y, X). ``spacing`` (3,) float64, mm.
    ``offsets`` (K, 3) int64: the search window, sorted by ``offset_d2`` (K,), their squared lengths in mm.
    Writes ``out`` (one float64 per marked src voxel, C order): 0 where dst is marked too, else the
    distance between voxel centres, computed as ``sqrt(sum(((i + 1) * s - (j + 1) * s) ** 2))`` over the
    axes in order (the numbers a k-d tree over ``(index + 1) * spacing`` gives). Voxels with no dst voxel
    in the window get NaN; returns how many there are (`bit_indices` finds them).

    The first hit in sorted order is the nearest; offsets of equal length (on paper) are all checked, so
    the least of their rounded distances is kept, as a k-d tree keeps it.
    """
    nz, ny, nx = shape[0], shape[1], shape[2]
    sz, sy, sx = spacing[0], spacing[1], spacing[2]
    n_far = 0
    i = 0
    for z in range(nz):
        for y in range(ny):
            for xb in range(src.shape[2]):
                byte = src[z, y, xb]
                if byte == 0:
                    continue
                for bit in range(8):
                    if not (byte >> bit) & 1:
                        continue
                    x = (xb << 3) + bit
                    if _bit(dst, z, y, x):
                        out[i] = 0.0
                        i += 1
                        continue
                    best = math.inf
                    limit = math.inf
                    for k in range(offsets.shape[0]):
                        if offset_d2[k] > limit:
                            break
                        zz = z + offsets[k, 0]
                        yy = y + offsets[k, 1]
                        xx = x + offsets[k, 2]
                        if zz < 0 or zz >= nz or yy < 0 or yy >= ny or xx < 0 or xx >= nx:
                            continue
                        if not _bit(dst, zz, yy, xx):
                            continue
                        dz = (z + 1.0) * sz - (zz + 1.0) * sz
                        dy = (y + 1.0) * sy - (yy + 1.0) * sy
                        dx = (x + 1.0) * sx - (xx + 1.0) * sx
                        d = math.sqrt(dz * dz + dy * dy + dx * dx)
                        if d < best:
                            best = d
                        if limit == math.inf:
                            limit = offset_d2[k] * (1.0 + 1e-9)
                    if best == math.inf:
                        out[i] = math.nan
                        n_far += 1
                    else:
                        out[i] = best
                    i += 1
    return n_far


@_jit
def bit_indices(bits, shape, out) -> None:  # type: ignore[no-untyped-def]
    """Indices (Z, Y, X) of the marked voxels of a bit mask, in C order, into ``out`` (N, 3) int32."""
    i = 0
    for z in range(shape[0]):
        for y in range(shape[1]):
            for xb in range(bits.shape[2]):
                byte = bits[z, y, xb]
                for bit in range(8):
                    if (byte >> bit) & 1:
                        out[i, 0] = z
                        out[i, 1] = y
                        out[i, 2] = (xb << 3) + bit
                        i += 1
