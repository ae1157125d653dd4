"""Benchmark: lesion instances and lesion-wise metrics, ours vs panoptica and the BraTS package, in one run.

Run from the repository root:

    .venv/bin/python -m bench.lesions            # both inputs (a few minutes on 2 cores)
    .venv/bin/python -m bench.lesions --quick    # (b) at 256x256x150 with 125 lesions

Inputs (deterministic):
  (a) LiTS case 117 (../shared/data/ct/liver-tumor, 128^3, 70 tumour components at 26-connectivity; the
      data README counts 79, at face connectivity) against a seeded perturbation: lesions dropped, shifted
      by 1-2 voxels, dilated, and 5 false positives added;
  (b) a synthetic 512x512x300 volume with 500 ball lesions (radius 2-8 voxels, 1 mm) against the same kind
      of perturbation.
Timed, each the median of 3 runs (the reference packages: one run on (b)):
  ours `lesion_instances` (components + volume, centroid, box, RECIST axes; no scan intensities), ours
  `lesionwise_metrics` with the bipartite rule (Dice matching, per-lesion Dice/IoU/HD95, PQ) and with the
  BraTS 2023 rule (dilation 3); panoptica 2.1.7 with the same matching (MaxBipartiteMatching on Dice >
  1e-6) and instance metrics Dice, IoU, HD95; brats-evaluation 0.0.10 with its bundled `mets` config (its
  four regions evaluate one label here: the other three are empty and cost little).
Ratios are reference / ours (> 1: ours is faster). Counts (TP/FP/FN) are printed side by side as a check.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from evaluation.instances import label_components, lesion_instances
from evaluation.lesionwise import lesionwise_metrics


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def lits_tumour() -> np.ndarray:
    import nibabel as nib

    from tests.support.paths import DATA

    image: Any = nib.load(DATA / "ct" / "liver-tumor" / "lits117_label.nii.gz")
    return np.asarray(image.dataobj) == 2


def synthetic(shape: tuple[int, int, int], n: int, seed: int = 0) -> np.ndarray:
    """`n` balls of radius 2-8 voxels at random centres (they may touch and merge)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        r = int(rng.integers(2, 9))
        centre = [int(rng.integers(r, s - r)) for s in shape]
        zz, yy, xx = np.ogrid[-r : r + 1, -r : r + 1, -r : r + 1]
        ball = zz**2 + yy**2 + xx**2 <= r * r
        box = tuple(slice(c - r, c + r + 1) for c in centre)
        mask[box] |= ball
    return mask


def perturb(reference: np.ndarray, seed: int, n_false: int) -> np.ndarray:
    """Per component: dropped (15%), shifted by 1-2 voxels (30%), dilated once (15%) or kept; then
    `n_false` small false-positive boxes where the reference is not."""
    rng = np.random.default_rng(seed)
    components, _ = label_components(reference)
    boxes = ndimage.find_objects(components)
    pred = np.zeros_like(reference)
    for c, box in enumerate(boxes, start=1):
        assert box is not None
        grown = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box)
        own = components[grown] == c
        action = rng.random()
        if action < 0.15:
            continue
        if action < 0.45:
            own = np.roll(own, int(rng.integers(1, 3)), axis=int(rng.integers(0, 3)))
        elif action < 0.6:
            own = ndimage.binary_dilation(own)
        pred[grown] |= own
    free = np.argwhere(~reference[::4, ::4, ::4]) * 4
    for i in rng.choice(len(free), size=n_false, replace=False):
        corner = free[i]
        pred[tuple(slice(int(a), int(a) + 2) for a in corner)] = True
    return pred


def _panoptica(prediction: np.ndarray, reference: np.ndarray) -> Any:
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        MaxBipartiteMatching,
        Panoptica_Evaluator,
    )
    from panoptica.metrics import Metric

    evaluator = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=1e-6),
        instance_metrics=[Metric.DSC, Metric.IOU, Metric.HD95],
        global_metrics=[Metric.DSC],
    )
    return evaluator.evaluate(prediction.astype(np.uint8), reference.astype(np.uint8), verbose=False)[
        "ungrouped"
    ]


def _brats_package(prediction: np.ndarray, reference: np.ndarray) -> Any:
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    evaluator = Panoptica_Evaluator.load_from_config(config_path("mets"))
    return evaluator.evaluate(prediction.astype(np.uint8) * 3, reference.astype(np.uint8) * 3, verbose=False)[
        "et"
    ]


def bench_input(name: str, prediction: np.ndarray, reference: np.ndarray, repeats_ref: int) -> None:
    spacing = (1.0, 1.0, 1.0)
    labels = prediction.astype(np.uint8)
    t_inst, (_, lesions) = _time(lambda: lesion_instances(labels, {1: "lesion"}, np.eye(4)), 3)
    t_bip, ours = _time(lambda: lesionwise_metrics(prediction, reference, spacing, rule="bipartite"), 3)
    t_b23, b23 = _time(lambda: lesionwise_metrics(prediction, reference, spacing), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_pan, pan = _time(lambda: _panoptica(prediction, reference), repeats_ref)
        t_brats, brats = _time(lambda: _brats_package(prediction, reference), repeats_ref)
    print(f"\n{name}: {ours.n_ref} reference lesions, {ours.n_pred} predicted ({len(lesions)} instances)")
    print(
        f"  counts TP/FP/FN  ours bipartite {ours.tp}/{ours.fp}/{ours.fn}"
        f"  panoptica {pan.tp}/{pan.fp}/{pan.fn}"
        f"  brats-evaluation {brats.tp}/{brats.fp}/{brats.fn}  ours brats2023 {b23.tp}/{b23.fp}/{b23.fn}"
    )
    print(f"  PQ ours {ours.pq:.6f}  panoptica {pan.pq:.6f}")
    print(f"  {'ours lesion_instances (table)':<44} {t_inst:8.3f} s")
    print(f"  {'ours lesionwise_metrics brats2023':<44} {t_b23:8.3f} s")
    print(f"  {'ours lesionwise_metrics bipartite':<44} {t_bip:8.3f} s")
    print(
        f"  {'panoptica (bipartite, DSC+IoU+HD95)':<44} {t_pan:8.3f} s   {t_pan / t_bip:6.1f}x ours bipartite"
    )
    print(
        f"  {'brats-evaluation (mets config)':<44} {t_brats:8.3f} s   {t_brats / t_bip:6.1f}x ours bipartite"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="(b) at 256x256x150 with 125 lesions")
    args = parser.parse_args(argv)
    reference = lits_tumour()
    bench_input("(a) LiTS 117, 128^3", perturb(reference, seed=0, n_false=5), reference, 3)
    shape, n = ((256, 256, 150), 125) if args.quick else ((512, 512, 300), 500)
    reference = synthetic(shape, n)
    name = f"(b) synthetic {'x'.join(map(str, shape))}, {n} balls"
    bench_input(name, perturb(reference, seed=1, n_false=max(n // 50, 1)), reference, 1)


if __name__ == "__main__":
    main()
