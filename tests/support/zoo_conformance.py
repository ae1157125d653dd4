"""Zoo conformance: every real Model Zoo bundle in ../shared/zoo, run by the service and by MONAI's runner.

The checks; the tests are tests/models/test_zoo_conformance.py and test_zoo_conformance_heavy.py (two files,
so that the two test processes of `make test` run them side by side).

For each bundle: seeded random weights built from the bundle's own ``network_def`` (models/testing/zoo.py), a
real scan of its modality cropped so that the bundle's own roi covers it in one or a few windows (the roi and
overlap are never changed), then

    (a) the service: ``segserve models install --trust-code`` into the running stack, POST /v1/jobs, result;
    (b) MONAI: ``python -m monai.bundle run`` on the same files and weights;

and the two label maps, both on the input scan's grid, must agree on at least 99.9 % of voxels. A bundle the
service cannot honour must be refused at install with the element named (and where MONAI cannot build it
either, MONAI's runner is asked too, to show the refusal honest).

Heavy bundles (a DiNTS network at 1 mm, VISTA-3D's 127-class foundation model) are marked ``zoo_heavy``: they
run in the default suite (CI too) but can be deselected locally with ``-m "not zoo_heavy"``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from models.testing.zoo import ZOO_BUNDLES, Case, make_case, run_monai, seed_bundle
from tests.support.paths import DATA, SHARED
from tests.support.stack import Stack, wait_job

ZOO = SHARED / "zoo"
SEED = 7
# Seeds whose random weights give non-trivial labels on the case (the check below); DeepEdit's seed 7 marks
# 2 voxels as spleen, seed 0 about a third of the crop.
SEEDS = {"spleen_deepedit_annotation": 0}
AGREEMENT = 0.999

# What the service must do with each bundle: run it, or refuse it at install naming the element.
# swin_unetr_btcv_segmentation: its network_def passes `img_size`, which MONAI 1.6's SwinUNETR no longer
# takes; MONAI's own runner fails on it too (asserted below).
# renalStructures_CECT_segmentation: its inference LoadImaged also reads a 'label' file for every case, only
# to save it beside the prediction; nothing else reads it, so the service gives LoadImaged a stand-in and
# runs it (MONAI's runner here gets an empty label file; the prediction does not depend on it).
# vista3d: its own evaluator (scripts.evaluator.Vista3dEvaluator) builds the everything-prompt and calls its
# inferer with it; the service runs a case through that evaluator (seeded weights: 80+ labels on the crop).
REFUSED = {
    "swin_unetr_btcv_segmentation": ("img_size", "network_def"),
}
MONAI_FAILS_TOO = {"swin_unetr_btcv_segmentation"}
HEAVY = ("multi_organ_segmentation", "vista3d")
LIGHT = tuple(n for n in ZOO_BUNDLES if n not in HEAVY)
# Known service bugs (exact failure, bundle-runtime at the merged commit); strict, so that a fix shows up.
XFAIL: dict[str, str] = {}


def param(name: str) -> Any:
    """The pytest parameter of one bundle, with its marks."""
    marks = [pytest.mark.zoo_heavy] if name in HEAVY else []
    if name in XFAIL:
        marks.append(pytest.mark.xfail(reason=XFAIL[name], strict=True))
    return pytest.param(name, id=name, marks=marks)


def _parts(card: dict[str, Any], case: Case) -> list[tuple[str, tuple[str, bytes]]]:
    """One form part per input channel: by name where the card's names are the case's, else in order."""
    names = list(card["input"]["channels"])
    files = list(case.channels.items())
    if len(names) == 1:
        return [("image", (files[0][1].name, files[0][1].read_bytes()))]
    by_name = {k.lower(): p for k, p in files}
    paths = [by_name[n] for n in names] if set(names) == set(by_name) else [p for _, p in files]
    return [(f"image.{n}", (p.name, p.read_bytes())) for n, p in zip(names, paths, strict=True)]


def _service_labels(stack: Stack, model: str, case: Case, out: Path) -> tuple[np.ndarray, np.ndarray, float]:
    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == model)
        assert card["available"] is True, card
        if model == "brats_mri_segmentation":  # the values its Lambdad writes, named from its metadata
            assert card["labels"] == {
                "0": "background",
                "1": "Tumor core",
                "2": "Whole tumor",
                "4": "Enhancing tumor",
            }
        start = time.monotonic()
        resp = c.post("/v1/jobs", data={"model": model}, files=_parts(card, case))
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"], timeout=900)
        seconds = time.monotonic() - start
        assert done["status"] == "succeeded", done
        out.write_bytes(c.get(f"/v1/jobs/{done['id']}/result").content)
    img: Any = nib.load(str(out))
    return np.asarray(img.dataobj).squeeze(), np.asarray(img.affine), seconds


def check_bundle(name: str, stack: Stack, tmp_path: Path) -> None:
    """Install bundle ``name`` of ../shared/zoo into the running ``stack`` and compare its job's labels with
    MONAI's runner (or check the refusal), as the module docstring says."""
    if not (ZOO / name).is_dir():
        pytest.fail(f"{ZOO / name} is missing: the conformance suite covers every bundle of ../shared/zoo")
    # a refused bundle still gets weights of its network, as a user downloads them with it
    without = ("network_def#img_size",) if name == "swin_unetr_btcv_segmentation" else ()
    bundle = seed_bundle(ZOO / name, tmp_path / name, seed=SEEDS.get(name, SEED), without=without)
    case = make_case(name, DATA, tmp_path / "case")
    installed = stack.cli("models", "install", str(bundle), "--trust-code", check=False)

    if name in REFUSED:
        assert installed.returncode != 0, f"{name} was installed:\n{installed.stdout}"
        for element in REFUSED[name]:
            assert element in installed.stderr, installed.stderr
        with stack.client() as c:
            ids = {m["id"]: m["available"] for m in c.get("/v1/models").json()["items"]}
        assert ids.get(name) in (None, False)
        if name in MONAI_FAILS_TOO:
            with pytest.raises(RuntimeError, match=REFUSED[name][0]):
                run_monai(bundle, case, tmp_path / "monai")
        return

    assert installed.returncode == 0, installed.stderr
    labels, affine, seconds = _service_labels(stack, name, case, tmp_path / "service.nii.gz")
    start = time.monotonic()
    reference = run_monai(bundle, case, tmp_path / "monai")
    monai_seconds = time.monotonic() - start

    source: Any = nib.load(str(case.first))
    assert labels.shape == reference.shape == source.shape[:3]
    np.testing.assert_allclose(affine, source.affine, atol=1e-4)
    agree = float(np.mean(labels.astype(np.float64) == reference.astype(np.float64)))
    values, counts = np.unique(reference, return_counts=True)
    histogram = dict(zip(values.tolist(), counts.tolist(), strict=True))
    print(
        f"\n{name}: agreement {agree:.5%} on {reference.size} voxels; service {seconds:.1f} s, "
        f"MONAI runner {monai_seconds:.1f} s; MONAI labels {histogram}"
    )
    # the weights are random, but the labels must not be near-constant: a service that returned MONAI's most
    # frequent label everywhere must not reach the agreement threshold
    assert counts.max() / reference.size < AGREEMENT, f"{name}: near-constant labels {histogram}; change SEED"
    assert agree >= AGREEMENT, f"{name}: service and MONAI agree on {agree:.4%} of voxels"
