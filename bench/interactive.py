"""Benchmark: interactive segmentation with the simulated user of the literature, on real masks.

Run from the repository root:

    .venv/bin/python -m bench.interactive                 # the classical engine, 10 clicks per target
    .venv/bin/python -m bench.interactive --engine NAME   # any engine of models.interactive.engines
    .venv/bin/python -m bench.interactive --no-256        # without the 256³ latency run
    .venv/bin/python -m bench.interactive --trace         # also each click: where, and what the mask did
    .venv/bin/python -m bench.interactive --thick         # plus other real scans made thick-sliced

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

from models.interactive.engines import engine_names, get_engine
from models.interactive.prompts import Click
from models.interactive.simulated_user import Step, simulate
from segserve.imaging.nifti import read_nifti
from segserve.imaging.nrrd import read_nrrd

SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
DICE_AT = (1, 3, 5, 10)
GOALS = (0.85, 0.90)


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


def resampled_256(target: Target) -> Target:
    """``target`` resampled to 256³ (image trilinear, mask nearest), physical size kept."""
    zoom = [256 / n for n in target.image.shape]
    image = ndimage.zoom(target.image.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    reference = ndimage.zoom(target.reference.astype(np.uint8), zoom, order=0, grid_mode=True, mode="nearest")
    spacing = tuple(s / z for s, z in zip(target.spacing_mm, zoom, strict=True))
    return Target(f"{target.name} at 256³", image, (spacing[0], spacing[1], spacing[2]), reference > 0)


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


def run(engine_name: str, target: Target, n_clicks: int) -> dict[str, object]:
    engine = get_engine(engine_name)
    start = time.perf_counter()
    prepared = engine.prepare(target.image, target.spacing_mm)
    prepare_s = time.perf_counter() - start
    steps = simulate(engine, prepared, target.reference, target.spacing_mm, n_clicks)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="classical", choices=engine_names())
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--no-256", dest="big", action="store_false")
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument("--trace", action="store_true", help="print each click and what the mask did")
    parser.add_argument("--thick", action="store_true", help="also other real scans made thick-sliced")
    args = parser.parse_args()
    rows = targets(args.data)
    if args.big:
        rows.append(resampled_256(rows[1]))
    thick = thick_targets(args.data) if args.thick else []
    rows += thick
    head = " | ".join(f"Dice@{n}" for n in DICE_AT)
    print(f"engine {args.engine}, {args.clicks} clicks per target, CPU")
    print(
        f"| target | {head} | clicks to 0.85 | to 0.90 | click p50 s | p95 s | prepare s | p50/prepare",
        end="",
    )
    print(" | clicks |")
    print("| --- " * 11 + "|")
    thick_dice: list[list[float]] = []
    for target in rows:
        r = run(args.engine, target, args.clicks)
        at, reach = r["at"], r["reach"]
        assert isinstance(at, dict) and isinstance(reach, dict)
        if any(target is t for t in thick):
            thick_dice.append([float(at[n]) for n in DICE_AT])
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
    if thick_dice:
        mean = " / ".join(f"{d:.3f}" for d in np.mean(thick_dice, axis=0))
        print(f"mean Dice@{'/'.join(map(str, DICE_AT))} over the {len(thick_dice)} --thick targets: {mean}")


if __name__ == "__main__":
    main()
