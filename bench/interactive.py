"""Benchmark: interactive segmentation with the simulated user of the literature, on real masks.

Run from the repository root:

    .venv/bin/python -m bench.interactive                 # the classical engine, 10 clicks per target
    .venv/bin/python -m bench.interactive --engine NAME   # any engine of models.interactive.engines
    .venv/bin/python -m bench.interactive --no-256        # without the 256³ latency run
    .venv/bin/python -m bench.interactive --trace         # also each click: where, and what the mask did
    .venv/bin/python -m bench.interactive --thick         # plus other real scans made thick-sliced
    .venv/bin/python -m bench.interactive --bound         # plus an intensity rule's best Dice (an oracle)
    .venv/bin/python -m bench.interactive --large         # plus small structures on a 1 mm 256³ MRI

Targets (../shared/data, real manual or challenge masks): the brain tumour (MR, 0.78x0.78x6.5 mm), the
spleen (CT, 0.79x0.79x5 mm), the LiTS liver (liver and tumour labels together; CT at 128³, spacing not
physical) and its three largest tumours, one at a time.
Protocol (:mod:`models.interactive.simulated_user`): each click at the centre of the largest error region,
foreground for a false negative, background for a false positive; the first one at the centre of the
structure. Reported: Dice after 1, 3, 5 and 10 clicks, the clicks needed to reach Dice 0.85 and 0.90
(">N" when not reached), and the seconds ``segment`` took per click (p50, p95) with ``prepare`` once.
With ``--thick``, a check beyond these cases for changes aimed at thick-slice scans: 9 FreeSurfer structures
(``mri-brain/subject-a``, aparc+aseg on norm.mgz, 1 mm) and 6 TotalSegmentator organs (the 3 mm example CT),
each scan kept on every 6th (MR, 6 mm) or 3rd (CT, 9 mm) slice, in two ways (MR along its second axis from
slice 0 and along its third from slice 3; CT from slice 0 and 1): 30 targets, whose mean Dice is printed.
Their masks are automatic (FreeSurfer, TotalSegmentator), not manual.
Latency at 256³: the spleen CT resampled (trilinear, so intensities stay real HU) and its mask (nearest)
to 256x256x256 with the spacing scaled to keep its physical size, then the same protocol.
With ``--large``, the same 9 FreeSurfer structures on ``mri-brain/subject-a`` at its own 1 mm 256³ grid,
a scan the engine works per seed on a grid of the seed's own (its whole-image grid would be 3 mm apart),
against the same engine on the whole-image grid (``max_working_mm`` infinite), the baseline, in the same run.
With ``--bound``, per target after 1 and 3 clicks, an upper bound for any rule that corrects the engine's
mask by intensity alone (:func:`band_bound`): the best Dice reached by keeping the mask's voxels in one
intensity band and adding those within 8 mm of it in another, both bands chosen knowing the reference.
Baseline, measured in the same run: a click's latency is reported against ``prepare`` on the same image,
the whole-image work a click must not redo (ratio = p50 click / prepare).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from models.interactive.classical import ClassicalEngine, ClassicalPrepared
from models.interactive.engine import InteractiveEngine
from models.interactive.engines import engine_names, get_engine
from models.interactive.prompts import Click
from models.interactive.simulated_user import Step, simulate
from segserve.imaging.nifti import read_nifti
from segserve.imaging.nrrd import read_nrrd

SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
DICE_AT = (1, 3, 5, 10)
GOALS = (0.85, 0.90)
BOUND_AT = (1, 3)
BOUND_REACH_MM = 8.0


@dataclass(frozen=True)
class Target:
    name: str
    image: np.ndarray
    spacing_mm: tuple[float, float, float]
    reference: np.ndarray


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    volume = read_nrrd(path) if path.suffix == ".nrrd" else read_nifti(path, "nifti")
    s = np.linalg.norm(volume.affine[:3, :3], axis=0)
    return np.asarray(volume.array), (float(s[0]), float(s[1]), float(s[2]))


def _largest_components(mask: np.ndarray, n: int) -> list[np.ndarray]:
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:n]
    return [labels == int(i) + 1 for i in order]


def targets(data: Path) -> list[Target]:
    """The benchmark's targets, loaded from ``data`` (``../shared/data``)."""
    out = []
    image, spacing = _load(data / "mri-lesion/brain-tumor/brain1_image.nrrd")
    out.append(
        Target(
            "brain tumour (MR)",
            image,
            spacing,
            _load(data / "mri-lesion/brain-tumor/brain1_label.nrrd")[0] > 0,
        )
    )
    image, spacing = _load(data / "ct/spleen/sub-spleen2_ct.nii.gz")
    out.append(
        Target(
            "spleen (CT)", image, spacing, _load(data / "ct/spleen/sub-spleen2_ct_seg-manual.nii.gz")[0] > 0
        )
    )
    image, spacing = _load(data / "ct/liver-tumor/lits117_ct.nii.gz")
    labels = _load(data / "ct/liver-tumor/lits117_label.nii.gz")[0]
    out.append(Target("LiTS liver (CT)", image, spacing, labels > 0))
    for n, tumour in enumerate(_largest_components(labels == 2, 3), start=1):
        out.append(Target(f"LiTS tumour #{n} ({int(tumour.sum())} vx)", image, spacing, tumour))
    return out


MR_STRUCTURES = {4: "left lateral ventricle", 10: "left thalamus", 11: "left caudate", 12: "left putamen"}
MR_STRUCTURES |= {17: "left hippocampus", 49: "right thalamus", 51: "right putamen", 16: "brainstem"}
MR_STRUCTURES |= {53: "right hippocampus"}
CT_ORGANS = {1: "spleen", 2: "right kidney", 3: "left kidney", 5: "liver", 6: "stomach", 4: "gallbladder"}


def thick_targets(data: Path) -> list[Target]:
    """The ``--thick`` targets (see the module docstring), loaded from ``data``."""
    import nibabel as nib

    def read(path: Path, keep: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(nib.load(path).dataobj)[keep]

    out = []
    brain, abdomen = data / "mri-brain/subject-a", data / "ct/abdomen-totalseg"
    for keep, spacing in (
        ((slice(None), slice(None, None, 6)), (1.0, 6.0, 1.0)),
        ((slice(None), slice(None), slice(3, None, 6)), (1.0, 1.0, 6.0)),
    ):
        image, labels = read(brain / "norm.mgz", keep), read(brain / "aparc.a2009s+aseg.mgz", keep)
        for value, name in MR_STRUCTURES.items():
            out.append(Target(f"MR {spacing} {name}", image, spacing, labels == value))
    for start in (0, 1):
        keep = (slice(None), slice(None), slice(start, None, 3))
        image = read(abdomen / "example_ct_sm.nii.gz", keep)
        labels = read(abdomen / "example_seg.nii.gz", keep)
        for value, name in CT_ORGANS.items():
            out.append(Target(f"CT (3, 3, 9) from {start} {name}", image, (3.0, 3.0, 9.0), labels == value))
    return out


def large_targets(data: Path) -> list[Target]:
    """The ``--large`` targets (see the module docstring), loaded from ``data``."""
    import nibabel as nib

    brain = data / "mri-brain/subject-a"
    image = np.asarray(nib.load(brain / "norm.mgz").dataobj)
    labels = np.asarray(nib.load(brain / "aparc.a2009s+aseg.mgz").dataobj)
    return [
        Target(f"MR 1 mm {name}", image, (1.0, 1.0, 1.0), labels == v) for v, name in MR_STRUCTURES.items()
    ]


def resampled_256(target: Target) -> Target:
    """``target`` resampled to 256³ (image trilinear, mask nearest), physical size kept."""
    zoom = [256 / n for n in target.image.shape]
    image = ndimage.zoom(target.image.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    reference = ndimage.zoom(target.reference.astype(np.uint8), zoom, order=0, grid_mode=True, mode="nearest")
    spacing = tuple(s / z for s, z in zip(target.spacing_mm, zoom, strict=True))
    return Target(f"{target.name} at 256³", image, (spacing[0], spacing[1], spacing[2]), reference > 0)


def bound_intensity(image: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The intensity :func:`band_bound` uses: the classical engine's own scaled and smoothed image
    (float32, on the image's grid: the engine prepared with a voxel budget the whole image fits)."""
    prepared = ClassicalEngine(max_voxels=int(image.size)).prepare(image, spacing_mm)
    assert isinstance(prepared, ClassicalPrepared)
    return prepared.smoothed


def band_bound(
    mask: np.ndarray,
    reference: np.ndarray,
    intensity: np.ndarray,
    spacing_mm: tuple[float, float, float],
    reach_mm: float = BOUND_REACH_MM,
    levels: int = 40,
) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """The best Dice an intensity rule could reach from ``mask`` (bool, (I, J, K)), knowing ``reference``:
    keep the mask's voxels whose ``intensity`` (:func:`bound_intensity`, same shape) lies in one band
    [c, d) and add the voxels within ``reach_mm`` of the mask in another [a, b). Each band's ends range
    over ``levels`` quantiles of the voxels it applies to, and "keep all, add none" is among the choices,
    so the bound is at least the mask's Dice. Returns the Dice, (c, d) and (a, b); an infinite end means
    unbounded on that side."""
    near = np.zeros_like(mask)
    if mask.any():  # (without a mask voxel the transform has no distance to measure)
        near = (ndimage.distance_transform_edt(~mask, sampling=spacing_mm) <= reach_mm) & ~mask

    def bands(region: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel and reference counts in [e_i, e_j) for every pair of edges e (levels + 1 quantiles, the
        last one infinite), and the edges."""
        values, inside = intensity[region], reference[region]
        order = np.argsort(values, kind="stable")
        values, inside = values[order], inside[order]
        edges = np.quantile(values, np.linspace(0.0, 1.0, levels + 1)) if values.size else np.zeros(1)
        edges[-1] = np.inf
        edges = np.concatenate([[-np.inf], edges[1:]])
        at = np.searchsorted(values, edges, side="left")
        hits = np.concatenate([[0], np.cumsum(inside)])[at]
        count = at[None, :] - at[:, None]
        found = hits[None, :] - hits[:, None]
        empty = count < 0
        return np.where(empty, 0, count), np.where(empty, 0, found), edges

    keep_n, keep_tp, keep_edges = bands(mask)
    add_n, add_tp, add_edges = bands(near)
    total = int(np.count_nonzero(reference))
    tp = keep_tp.reshape(-1, 1) + add_tp.reshape(1, -1)
    size = keep_n.reshape(-1, 1) + add_n.reshape(1, -1) + total
    dice_all = np.where(size > 0, 2.0 * tp / np.maximum(size, 1), 1.0)
    best = np.unravel_index(int(np.argmax(dice_all)), dice_all.shape)
    n_keep, n_add = len(keep_edges), len(add_edges)
    c, d = divmod(int(best[0]), n_keep)
    a, b = divmod(int(best[1]), n_add)
    return (
        float(dice_all[best]),
        (float(keep_edges[c]), float(keep_edges[d])),
        (float(add_edges[a]), float(add_edges[b])),
    )


def trace(steps: list[Step], reference: np.ndarray) -> list[str]:
    """One line per click: its number, kind (+ foreground, - background, box or slice), voxel index
    (I, J, K), the Dice after it, the mask's true and false positives and misses (voxels), the voxels it
    added and removed (how many of them in the reference) and the seconds ``segment`` took."""
    lines = []
    previous = np.zeros(reference.shape, dtype=bool)
    for s in steps:
        mask, prompt = s.mask, s.prompt
        if isinstance(prompt, Click):
            kind, where = ("+" if prompt.foreground else "-"), f" at {prompt.point}"
        else:
            kind, where = type(prompt).__name__, ""
        added, removed = mask & ~previous, previous & ~mask
        tp, fp, fn = (int(n.sum()) for n in (mask & reference, mask & ~reference, reference & ~mask))
        lines.append(
            f"  click {s.clicks:2d} {kind}{where}: Dice {s.dice:.3f}, tp {tp} fp {fp} fn {fn}; "
            f"added {int(added.sum())} ({int((added & reference).sum())} in the reference), "
            f"removed {int(removed.sum())} ({int((removed & reference).sum())} in the reference); "
            f"{s.seconds:.2f} s"
        )
        previous = mask
    return lines


def run(
    engine_name: str,
    target: Target,
    n_clicks: int,
    bound: bool = False,
    engine: InteractiveEngine | None = None,
) -> dict[str, object]:
    """The protocol on ``target`` with a new engine of that name (or ``engine``): Dice at ``DICE_AT``,
    clicks to ``GOALS``, click latency p50/p95, ``prepare`` seconds, the clicks' kinds, the trace lines and,
    with ``bound``, :func:`band_bound` after ``BOUND_AT`` clicks."""
    engine = get_engine(engine_name) if engine is None else engine
    start = time.perf_counter()
    prepared = engine.prepare(target.image, target.spacing_mm)
    prepare_s = time.perf_counter() - start
    steps = simulate(engine, prepared, target.reference, target.spacing_mm, n_clicks)
    intensity = bound_intensity(target.image, target.spacing_mm) if bound else None
    dices = [s.dice for s in steps]
    # A run that matched the reference early keeps its last Dice for the later click counts.
    at = {n: dices[min(n, len(dices)) - 1] for n in DICE_AT}
    reach = {}
    for goal in GOALS:
        hit = next((s.clicks for s in steps if s.dice >= goal), None)
        reach[goal] = str(hit) if hit is not None else f">{n_clicks}"
    seconds = sorted(s.seconds for s in steps)
    p50 = statistics.median(seconds)
    p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
    return {
        "at": at,
        "reach": reach,
        "p50": p50,
        "p95": p95,
        "prepare": prepare_s,
        "clicks": "".join("+" if getattr(s.prompt, "foreground", True) else "-" for s in steps),
        "trace": trace(steps, target.reference),
        "bound": [
            band_bound(s.mask, target.reference, intensity, target.spacing_mm)
            for s in steps
            if intensity is not None and s.clicks in BOUND_AT
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="classical", choices=engine_names())
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--no-256", dest="big", action="store_false")
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument("--trace", action="store_true", help="print each click and what the mask did")
    parser.add_argument("--thick", action="store_true", help="also other real scans made thick-sliced")
    parser.add_argument("--bound", action="store_true", help="also an intensity rule's best Dice (oracle)")
    parser.add_argument("--large", action="store_true", help="also small structures on a 1 mm 256³ MRI")
    args = parser.parse_args()
    rows = targets(args.data)
    if args.big:
        rows.append(resampled_256(rows[1]))
    thick = thick_targets(args.data) if args.thick else []
    large = large_targets(args.data) if args.large else []
    rows += thick + large
    head = " | ".join(f"Dice@{n}" for n in DICE_AT)
    print(f"engine {args.engine}, {args.clicks} clicks per target, CPU")
    print(
        f"| target | {head} | clicks to 0.85 | to 0.90 | click p50 s | p95 s | prepare s | p50/prepare",
        end="",
    )
    print(" | clicks |")
    print("| --- " * 11 + "|")
    thick_dice: list[list[float]] = []
    large_dice: list[list[float]] = []
    bounds: list[str] = []
    for target in rows:
        r = run(args.engine, target, args.clicks, args.bound)
        at, reach = r["at"], r["reach"]
        assert isinstance(at, dict) and isinstance(reach, dict)
        if any(target is t for t in thick):
            thick_dice.append([float(at[n]) for n in DICE_AT])
        if any(target is t for t in large):
            large_dice.append([float(at[n]) for n in DICE_AT])
        cells = " | ".join(f"{at[n]:.3f}" for n in DICE_AT)
        p50, p95, prep = float(r["p50"]), float(r["p95"]), float(r["prepare"])  # type: ignore[arg-type]
        print(
            f"| {target.name} | {cells} | {reach[0.85]} | {reach[0.90]} | {p50:.2f} | {p95:.2f} | {prep:.2f} "
            f"| {p50 / prep:.2f} | {r['clicks']} |",
            flush=True,
        )
        lines = r["trace"]
        if args.trace and isinstance(lines, list):
            print("\n".join(lines), flush=True)
        found = r["bound"]
        if isinstance(found, list) and found:
            cells = ", ".join(
                f"{dice:.3f} (keep [{c:.3f}, {d:.3f}), add [{a:.3f}, {b:.3f}))"
                for dice, (c, d), (a, b) in found
            )
            bounds.append(f"- {target.name}: {cells}")
    if bounds:
        print(f"\nintensity rule's best Dice after {' and '.join(map(str, BOUND_AT))} clicks (oracle bound):")
        print("\n".join(bounds))
    if thick_dice:
        mean = " / ".join(f"{d:.3f}" for d in np.mean(thick_dice, axis=0))
        print(f"mean Dice@{'/'.join(map(str, DICE_AT))} over the {len(thick_dice)} --thick targets: {mean}")
    if large_dice:
        print(f"mean Dice@{'/'.join(map(str, DICE_AT))} over the {len(large_dice)} --large targets: ", end="")
        print(" / ".join(f"{d:.3f}" for d in np.mean(large_dice, axis=0)))
        if args.engine == "classical":
            whole = ClassicalEngine(max_working_mm=float("inf"))
            baseline = [run(args.engine, t, args.clicks, engine=whole) for t in large]
            dice_at = np.mean([[float(r["at"][n]) for n in DICE_AT] for r in baseline], axis=0)  # type: ignore[index]
            p50 = statistics.median(float(r["p50"]) for r in baseline)  # type: ignore[arg-type]
            cells = " / ".join(f"{d:.3f}" for d in dice_at)
            print(f"  baseline, the whole-image grid: {cells}, click p50 {p50:.2f} s")


if __name__ == "__main__":
    main()
