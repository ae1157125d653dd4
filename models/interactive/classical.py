"""The classical engine: a 3D mask from clicks and boxes by competitive region growing, no weights needed.

Conventions: prompts in voxel indices of the image array (axis order I, J, K); spacing in mm along I, J, K;
radii and margins are in mm and become voxel counts per axis from the spacing, so a 5 mm-slice CT gets
fewer voxels along its slice axis than in plane.

What a prompt set means:
- a foreground click seeds the structure; the intensities in a ball of ``stats_radius_mm`` around it
  (median, and 1.4826 x the median absolute deviation as a robust standard deviation, kept within
  [``min_deviation``, ``max_deviation``]) give the range it grows into, ``median +- tolerance x deviation``;
- a background click seeds the outside: it competes with every foreground seed for the voxels in range;
- a box (drawn on one slice, lo == hi along its normal) confines its structure to the box in the two
  in-plane axes, on every slice, and seeds its centre; the box's central half gives the statistics;
- each foreground click and each box grows its own region (with all background clicks competing) and
  the mask is their union, so a further foreground click can only add: a click on a darker part of a
  heterogeneous structure does not re-weigh the rest;
- painted slices (:class:`SliceMask`) are filled between (:mod:`models.interactive.fill`) and added to the
  mask as painted; background clicks steer the growth from clicks and boxes only.
The mask is a function of the prompt set alone (no state between calls), so undo is segmenting again
without the last prompt. Background clicks without any foreground seed give an empty mask.

Algorithm (per seed): a region of interest (ROI), the seed's bounding box grown by ``margin_mm`` on every
side and clipped to the image. Voxels in range are the candidates; a marker-based watershed
(scikit-image) on the gradient magnitude floods them from the seed (label 1) and from the background
clicks plus the ROI's faces that lie inside the image (label 2), so the structure stops at the strongest
edges between them. Each foreground click also adds its own component: the voxels connected to it
within ``click_tolerance`` deviations of its ball's median, on its own slice along a thick-slice axis (see
``anisotropy_cap``), unless that component reaches the ROI's faces or a background click (a leak). A click
on a darker part without an edge against its surroundings got little from the watershed, as the face
markers flood the flat region first. When the structure reaches the ROI's faces the margin doubles (at
most ``max_grow`` times). Holes are filled. Deterministic: no random numbers; ties are broken by scan order.

``prepare`` does the whole-image work once: intensities scaled so the 1st and 99th percentiles are 0 and
1 (so tolerances mean the same for CT and MR), smoothed by a Gaussian of ``smoothing_mm``, and the
gradient magnitude of that per mm (except along a thick-slice axis, over ``anisotropy_cap`` times the
finest spacing, e.g. the 5-6.5 mm slices of clinical CT and MR: there a slice step counts as that many
finest spacings, so an edge between slices weighs like an in-plane one) in whole units of ``edge_step``:
noise below one step becomes flat, so the watershed floods it by distance from the seeds (skimage breaks
ties by arrival) rather than racing along noise, which let the many face markers swamp a seed in a large
even organ (the LiTS liver).
An image over ``max_voxels`` is worked on every ``step``-th voxel (the finest axes coarsened first, after
smoothing by at least half a step), and the mask is given back on the image's own grid by repeating each
working voxel over its step (so its edges are as coarse as the step).
A large scan, whose whole-image grid would put working voxels more than ``max_working_mm`` apart along a
strided axis (a 512x512 CT, a 1 mm 256³ MRI: 3-4 mm, so a 10 mm lesion would be 3 voxels across), is
instead worked per seed: ``prepare`` keeps only the scaled image (float16, :class:`ClassicalLargePrepared`),
and each seed's ROI gets its own grid, the finest on which the ROI holds at most ``max_voxels``, smoothed
and differentiated when the seed is first grown and kept for the next clicks (the few latest ROIs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from models.interactive.fill import fill_between_slices
from models.interactive.grid import (
    REGION_CACHE,
    ClassicalLargePrepared,
    ClassicalPrepared,
    Index3,
    Region,
    ball_element,
    ball_slices,
    index3,
    inner_faces,
    on_grid,
    smoothing_sigma,
    working_step,
)
from models.interactive.prompts import Box, Click, Prompt, PromptError, SliceMask, check_prompts

__all__ = ["REGION_CACHE", "ClassicalEngine", "ClassicalLargePrepared", "ClassicalPrepared"]


@dataclass
class ClassicalEngine:
    """Competitive region growing (see the module docstring); the parameters are in mm or in units of
    the robust deviation."""

    name: str = "classical"
    margin_mm: float = 60.0
    stats_radius_mm: float = 5.0
    seed_radius_mm: float = 2.0
    tolerance: float = 3.0
    smoothing_mm: float = 1.0
    min_deviation: float = 0.02
    max_deviation: float = 0.05
    max_grow: int = 1
    border_background: bool = True
    opening_mm: float = 0.0
    per_seed: bool = True
    max_voxels: int = 1_000_000
    edge_step: float = 0.02
    anisotropy_cap: float = 2.0
    click_tolerance: float = 1.25
    max_working_mm: float = 2.0

    def prepare(
        self, image: np.ndarray, spacing_mm: tuple[float, float, float], affine: np.ndarray | None = None
    ) -> ClassicalPrepared | ClassicalLargePrepared:
        """Scale, smooth and take the gradient of ``image`` (shape (I, J, K), any real dtype), or on a large
        scan only scale it (see the module docstring); the affine is not needed (the engine works in voxel
        space with ``spacing_mm``)."""
        if image.ndim != 3:
            raise ValueError(f"image must be 3D (I, J, K), got shape {image.shape}")
        spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
        if any(not s > 0 for s in spacing):
            raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
        volume = np.asarray(image, dtype=np.float32)
        # Percentiles of a strided subsample: the same numbers within noise, a fraction of the time.
        step = max(1, round((volume.size / 2e6) ** (1 / 3)))
        lo, hi = np.percentile(volume[::step, ::step, ::step], [1.0, 99.0])
        scale = float(hi - lo) if hi > lo else 1.0
        volume = (volume - np.float32(lo)) / np.float32(scale)
        step = working_step(volume.shape, spacing, self.max_voxels)
        if self.per_seed and any(
            f > 1 and s * f > self.max_working_mm for s, f in zip(spacing, step, strict=True)
        ):
            return ClassicalLargePrepared(volume.astype(np.float16), spacing, self.max_voxels)
        # Smoothing by at least half a step before striding keeps the coarse grid from aliasing.
        sigma = smoothing_sigma(self.smoothing_mm, spacing, step)
        smoothed = ndimage.gaussian_filter(volume, sigma=sigma, truncate=3.0).astype(np.float32)
        smoothed = np.ascontiguousarray(smoothed[:: step[0], :: step[1], :: step[2]])
        image_shape = (volume.shape[0], volume.shape[1], volume.shape[2])
        spacing = (spacing[0] * step[0], spacing[1] * step[1], spacing[2] * step[2])
        return ClassicalPrepared(smoothed, self._edges(smoothed, spacing), spacing, image_shape, step)

    def _edges(self, smoothed: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """The gradient magnitude of ``smoothed`` per mm (float32, same shape), in whole ``edge_step``s."""
        gradient = np.zeros_like(smoothed)
        # Along a thick-slice axis the step between slices counts as at most ``anisotropy_cap`` times
        # the finest spacing: per mm, a 6.5 mm slice step made the jump from tumour on one slice to
        # brain on the next look like a weak edge, and the growth leaked through the slices.
        finest = min(spacing)
        for axis, s in enumerate(spacing):
            per_mm = min(s, self.anisotropy_cap * finest) if self.anisotropy_cap > 0 else s
            derivative = ndimage.sobel(smoothed, axis=axis) / np.float32(8.0 * per_mm)
            gradient += derivative * derivative
        np.sqrt(gradient, out=gradient)
        if self.edge_step > 0:
            # Gradient below one step (noise) becomes flat, where the watershed floods by distance from
            # the seeds instead of racing along noise; edges of several steps still stop it.
            gradient = np.floor(gradient / np.float32(self.edge_step)).astype(np.float32)
        return gradient

    def segment(
        self, prepared: ClassicalPrepared | ClassicalLargePrepared, prompts: Sequence[Prompt]
    ) -> np.ndarray:
        """The mask (bool, (I, J, K)) for ``prompts``; a function of the prompts alone, so undo is
        segmenting again without the last one."""
        shape = prepared.image_shape
        check_prompts(prompts, shape)
        mask = np.zeros(shape, dtype=bool)
        slices = [p for p in prompts if isinstance(p, SliceMask)]
        if slices:
            mask |= fill_between_slices(slices, shape)
        seeds = [p for p in prompts if isinstance(p, Box) or (isinstance(p, Click) and p.foreground)]
        if not seeds:
            return mask
        if isinstance(prepared, ClassicalLargePrepared):
            background = [p for p in prompts if isinstance(p, Click) and not p.foreground]
            for seed in seeds:
                assert isinstance(seed, Click | Box)
                self._grow_large(prepared, seed, background, mask)
            return mask
        step = prepared.step
        working = [on_grid(p, step) for p in prompts if not isinstance(p, SliceMask)]
        grown = np.zeros(prepared.shape, dtype=bool)
        if self.per_seed:
            background = [p for p in working if isinstance(p, Click) and not p.foreground]
            for seed in working:
                if isinstance(seed, Box) or seed.foreground:
                    grown |= self._grow(prepared, [seed, *background])
        else:
            grown = self._grow(prepared, working)
        if step != (1, 1, 1):
            for axis, f in enumerate(step):
                grown = np.repeat(grown, f, axis=axis)
            grown = grown[: shape[0], : shape[1], : shape[2]]
        return mask | grown

    def _grow(self, prepared: ClassicalPrepared, prompts: Sequence[Click | Box]) -> np.ndarray:
        shape, spacing = prepared.shape, prepared.spacing_mm
        points: list[Index3] = []
        for p in prompts:
            if isinstance(p, Click) and p.foreground:
                points.append(p.point)
            elif isinstance(p, Box):
                points += [p.lo, p.hi]
        lo = np.min(points, axis=0)
        hi = np.max(points, axis=0)
        margin = self.margin_mm
        for _ in range(self.max_grow + 1):
            pad = np.ceil(margin / np.asarray(spacing)).astype(int)
            start = np.maximum(lo - pad, 0)
            stop = np.minimum(hi + pad + 1, shape)
            roi = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
            grown, touches = self._grow_in_roi(prepared, prompts, roi)
            whole = bool(np.all(start == 0) and np.all(stop == np.asarray(shape)))
            if not touches or whole:
                break
            margin *= 2
        mask = np.zeros(shape, dtype=bool)
        mask[roi] = grown
        return mask

    def _grow_large(
        self, prepared: ClassicalLargePrepared, seed: Click | Box, background: list[Click], mask: np.ndarray
    ) -> None:
        """Grow ``seed`` (with the background clicks competing) on its ROI's own grid and add it to
        ``mask`` (bool, the image's shape), each working voxel repeated over its step."""
        points = [seed.point] if isinstance(seed, Click) else [seed.lo, seed.hi]
        lo, hi = np.min(points, axis=0), np.max(points, axis=0)
        shape = prepared.image_shape
        margin = self.margin_mm
        for _ in range(self.max_grow + 1):
            region, start, stop = self._region(prepared, lo, hi, margin)
            local = [on_grid(p, region.step, region.origin) for p in (seed, *background)]
            grown, touches = self._grow_in_roi(region.prepared, local, region.roi)
            if not touches or (np.all(start == 0) and np.all(stop == np.asarray(shape))):
                break
            margin *= 2
        for axis, f in enumerate(region.step):
            grown = np.repeat(grown, f, axis=axis)
        base = [o + r.start * f for o, r, f in zip(region.origin, region.roi, region.step, strict=True)]
        end = [min(b + n, m) for b, n, m in zip(base, grown.shape, shape, strict=True)]
        where = tuple(slice(b, e) for b, e in zip(base, end, strict=True))
        mask[where] |= grown[tuple(slice(0, e - b) for b, e in zip(base, end, strict=True))]

    def _region(
        self, prepared: ClassicalLargePrepared, lo: np.ndarray, hi: np.ndarray, margin_mm: float
    ) -> tuple[Region, np.ndarray, np.ndarray]:
        """The ROI of the points ``lo``..``hi`` (image voxels) grown by ``margin_mm`` and clipped to the
        image, on the finest grid on which it holds at most ``max_voxels``: smoothed (by at least half a
        step, from a halo around it) and its edges taken as ``prepare`` does on a whole image; cached on
        ``prepared`` by ROI and step. Also the ROI's start and stop (image voxels)."""
        shape = np.asarray(prepared.image_shape)
        spacing = prepared.spacing_mm
        pad = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
        start, stop = np.maximum(lo - pad, 0), np.minimum(hi + pad + 1, shape)
        s0, s1, s2 = (int(n) for n in stop - start)
        step_t = working_step((s0, s1, s2), spacing, self.max_voxels)
        step = np.asarray(step_t)
        start = start // step * step  # working voxels on multiples of the step, the same for every ROI
        key = (index3(start), index3(stop), step_t)
        cached = prepared.regions.pop(key, None)
        if cached is None:
            cached = self._make_region(prepared, start, stop, step)
        prepared.regions[key] = cached  # the latest at the end; the oldest goes first
        while len(prepared.regions) > REGION_CACHE:
            prepared.regions.pop(next(iter(prepared.regions)))
        return cached, start, stop

    def _make_region(
        self, prepared: ClassicalLargePrepared, start: np.ndarray, stop: np.ndarray, step: np.ndarray
    ) -> Region:
        shape = np.asarray(prepared.image_shape)
        spacing = prepared.spacing_mm
        # One working voxel more where the image goes on: there the ROI's faces are inner faces.
        below = np.where(start > 0, step, 0)
        above = np.where(stop < shape, step, 0)
        sigma = smoothing_sigma(self.smoothing_mm, spacing, step)
        halo = np.asarray([int(np.ceil(3.0 * g)) + 1 for g in sigma])
        a, b = np.maximum(start - below - halo, 0), np.minimum(stop + above + halo, shape)
        block = prepared.scaled[a[0] : b[0], a[1] : b[1], a[2] : b[2]].astype(np.float32)
        smoothed = ndimage.gaussian_filter(block, sigma=sigma, truncate=3.0)
        first, last = start - below - a, stop + above - a
        keep = tuple(slice(int(f), int(t), int(n)) for f, t, n in zip(first, last, step, strict=True))
        smoothed = np.ascontiguousarray(smoothed[keep])
        working = (spacing[0] * step[0], spacing[1] * step[1], spacing[2] * step[2])
        local = ClassicalPrepared(
            smoothed, self._edges(smoothed, working), working, index3(smoothed.shape), index3(step)
        )
        n0 = below // step
        n1 = np.minimum(n0 + -(-(stop - start) // step), smoothed.shape)
        roi = tuple(slice(int(x), int(y)) for x, y in zip(n0, n1, strict=True))
        return Region(local, roi, index3(start - below), index3(step))

    def _grow_in_roi(
        self, prepared: ClassicalPrepared, prompts: Sequence[Click | Box], roi: tuple[slice, ...]
    ) -> tuple[np.ndarray, bool]:
        """The structure inside ``roi`` (bool, ROI shape) and whether it reached the ROI's inner border."""
        smoothed = prepared.smoothed[roi]
        offset = np.array([s.start for s in roi])
        candidates = np.zeros(smoothed.shape, dtype=bool)
        inside_boxes = np.ones(smoothed.shape, dtype=bool)
        markers = np.zeros(smoothed.shape, dtype=np.int32)
        border = inner_faces(roi, prepared.shape)
        if self.border_background:
            markers[border] = 2
        # Prompts in order, so a later click overrides an earlier one where their seeds overlap.
        for p in prompts:
            if isinstance(p, Box):
                box = tuple(
                    slice(max(a - o, 0), b - o + 1) if a != b else slice(None)
                    for a, b, o in zip(p.lo, p.hi, offset, strict=True)
                )
                in_plane = np.zeros(smoothed.shape, dtype=bool)
                in_plane[box] = True
                inside_boxes &= in_plane
                centre = tuple((a + b) // 2 - o for a, b, o in zip(p.lo, p.hi, offset, strict=True))
                core = tuple(
                    slice(max((3 * a + b) // 4 - o, 0), (a + 3 * b) // 4 - o + 1)
                    for a, b, o in zip(p.lo, p.hi, offset, strict=True)
                )
                candidates |= self._in_range(smoothed, smoothed[core])
                self._mark(markers, centre, 1, prepared.spacing_mm)
            elif p.foreground:
                local = tuple(int(v - o) for v, o in zip(p.point, offset, strict=True))
                ball = ball_slices(local, self.stats_radius_mm, prepared.spacing_mm, smoothed.shape)
                candidates |= self._in_range(smoothed, smoothed[ball])
                self._mark(markers, local, 1, prepared.spacing_mm)
            else:
                local = tuple(int(v - o) for v, o in zip(p.point, offset, strict=True))
                if all(0 <= v < n for v, n in zip(local, smoothed.shape, strict=True)):
                    self._mark(markers, local, 2, prepared.spacing_mm)
        candidates &= inside_boxes
        if self.opening_mm > 0:
            opening = ball_element(self.opening_mm, prepared.spacing_mm)
            candidates = ndimage.binary_opening(candidates, opening)
        candidates |= markers == 1
        labels = watershed(prepared.gradient[roi], markers, mask=candidates | (markers == 2))
        grown = labels == 1
        if self.click_tolerance > 0:
            for p in prompts:
                if isinstance(p, Click) and p.foreground:
                    i, j, k = (int(v - o) for v, o in zip(p.point, offset, strict=True))
                    grown |= self._click_component(smoothed, (i, j, k), markers, border, prepared.spacing_mm)
        grown = ndimage.binary_fill_holes(grown)
        if not grown.any():
            raise PromptError(
                "the prompts grow no structure (each seed lies outside the boxes or under a background click)"
            )
        reach = ndimage.binary_dilation(border) if self.border_background else border
        touches = bool((grown & reach).any())
        return grown & inside_boxes | (markers == 1), touches

    def _in_range(
        self, smoothed: np.ndarray, sample: np.ndarray, tolerance: float | None = None
    ) -> np.ndarray:
        median = float(np.median(sample))
        deviation = 1.4826 * float(np.median(np.abs(sample - median)))
        deviation = min(max(deviation, self.min_deviation), self.max_deviation)
        tolerance = self.tolerance if tolerance is None else tolerance
        return np.abs(smoothed - np.float32(median)) <= np.float32(tolerance * deviation)

    def _click_component(
        self,
        smoothed: np.ndarray,
        local: Index3,
        markers: np.ndarray,
        border: np.ndarray,
        spacing: tuple[float, float, float],
    ) -> np.ndarray:
        """The voxels connected to the click ``local`` (ROI indices) within ``click_tolerance`` deviations
        of its neighbourhood's median, on the click's own slice along a thick-slice axis (bool, ROI shape);
        empty when that component reaches the ROI's inner faces or a background seed (it leaked).

        Why: the watershed lets a click on a darker part of a structure claim little where that part has
        no edge against its surroundings (the border markers flood the flat region first); the click's
        own narrow range, on the slice the user sees, claims the part when it is enclosed."""
        ball = ball_slices(local, self.stats_radius_mm, spacing, smoothed.shape)
        sample = smoothed[ball]
        # Only the click's slab is labelled (its slice along each thick axis): the rest is never kept.
        finest = min(spacing)
        slab = tuple(
            slice(c, c + 1) if s > self.anisotropy_cap * finest else slice(None)
            for c, s in zip(local, spacing, strict=True)
        )
        labels, _ = ndimage.label(self._in_range(smoothed[slab], sample, self.click_tolerance))
        at = tuple(0 if sl.start is not None else c for c, sl in zip(local, slab, strict=True))
        component = np.zeros(smoothed.shape, dtype=bool)
        if labels[at] == 0:
            return component
        component[slab] = labels == labels[at]
        if (component & (border | (markers == 2))).any():
            component[:] = False
        return component

    def _mark(
        self, markers: np.ndarray, centre: Sequence[int], label: int, spacing: tuple[float, ...]
    ) -> None:
        """Set a ball of ``seed_radius_mm`` (at least the voxel itself) around ``centre`` to ``label``."""
        ball = ball_slices(centre, self.seed_radius_mm, spacing, markers.shape)
        grid = np.ogrid[ball]
        distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
        region = markers[ball]
        region[np.broadcast_to(distance2 <= self.seed_radius_mm**2, region.shape)] = label
