"""TotalSegmentator tasks: catalog cards, `segserve models pull` from a local release server, and a run that
must equal TotalSegmentator's own `python_api.totalsegmentator` on the same (stand-in) weights.

The stand-in weights are tiny real nnU-Net v2 models with each real part's dataset id, folder, trainer,
label names and count (tests/support/totalseg_standin.py), zipped and served like the GitHub release assets.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.card import Cancelled
from models.catalog import Catalog, card_to_public
from models.installed import MANIFEST, InstallError
from models.totalseg import pull, tasks
from tests.support.paths import DATA

pytest.importorskip("totalsegmentator")
pytest.importorskip("nnunetv2")

from totalsegmentator import map_to_binary
from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

CT = DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz"
GITHUB = "https://github.com/wasserth/TotalSegmentator/releases/download"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTP server holding stand-in release zips for totalseg-total and totalseg-total-fast."""
    from tests.support.totalseg_standin import serve, write_release

    root = tmp_path_factory.mktemp("release")
    for card_id in ("totalseg-total", "totalseg-total-fast"):
        write_release(tasks.task_card(card_id), root)
    with serve(root) as base:
        yield base, root


@pytest.fixture(scope="module")
def ct_crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.totalseg_standin import write_ct_crop

    if not CT.is_file():
        pytest.skip(f"{CT} not found (set SEGSERVE_SHARED_DIR)")
    return write_ct_crop(CT, tmp_path_factory.mktemp("ct") / "crop.nii.gz")


def _pull_with_cli(card_id: str, models_dir: Path, base: str) -> None:
    from shell.cli import main

    os.environ["SEGSERVE_MODELS_DIR"] = str(models_dir)
    os.environ[tasks.BASE_URL_ENV] = base
    try:
        from segserve.config import get_settings

        get_settings.cache_clear()  # type: ignore[attr-defined]
        assert main(["models", "pull", card_id]) == 0
    finally:
        os.environ.pop("SEGSERVE_MODELS_DIR")
        os.environ.pop(tasks.BASE_URL_ENV)
        get_settings.cache_clear()  # type: ignore[attr-defined]


def _totalsegmentator_reference(ct: Path, weights_dir: Path, out: Path, fast: bool) -> np.ndarray:
    """TotalSegmentator's own Python API on the same weights, offline (no usage statistics), in a child."""
    import nibabel as nib

    home = out.parent / "tshome"
    home.mkdir(exist_ok=True)
    (home / "config.json").write_text(
        json.dumps(
            {
                "totalseg_id": "totalseg_test",
                "send_usage_stats": False,
                "prediction_counter": 0,
                "statistics_disclaimer_shown": True,
            }
        )
    )
    env = {
        **os.environ,
        "TOTALSEG_HOME_DIR": str(home),
        "TOTALSEG_WEIGHTS_PATH": str(weights_dir),
        "OMP_NUM_THREADS": "1",
    }
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from totalsegmentator.python_api import totalsegmentator\n"
        f"totalsegmentator({str(ct)!r}, {str(out)!r}, ml=True, fast={fast}, device='cpu', quiet=True, "
        "nr_thr_saving=1)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600, capture_output=True)
    return np.asanyarray(nib.load(out).dataobj)


def test_catalog_lists_tasks_with_sources_and_licences(tmp_path: Path) -> None:
    statuses = {s.card.id: s for s in Catalog(tmp_path).statuses()}
    for card_id in ("totalseg-total", "totalseg-total-fast"):
        status = statuses[card_id]
        assert not status.available
        assert status.reason == f"not installed: segserve models pull {card_id}"
    public = card_to_public(statuses["totalseg-total"])
    card = statuses["totalseg-total"].card
    # TotalSegmentator's own task table: five parts 291..295 at 1.5 mm, fast: 297 at 3 mm.
    assert [p["dataset_id"] for p in tasks.parts(card)] == [291, 292, 293, 294, 295]
    assert card.params["resample_mm"] == [1.5, 1.5, 1.5]
    fast = statuses["totalseg-total-fast"].card
    assert [p["dataset_id"] for p in tasks.parts(fast)] == [297]
    assert fast.params["resample_mm"] == [3.0, 3.0, 3.0]
    # The URLs are the ones TotalSegmentator downloads (libs.download_pretrained_weights).
    expected = [
        f"{GITHUB}/{TASK_ID_WEIGHTS_CONFIGS[t]['version']}/{TASK_ID_WEIGHTS_CONFIGS[t]['foldername']}.zip"
        for t in (291, 292, 293, 294, 295)
    ]
    assert [s["url"] for s in public["sources"]] == expected  # type: ignore[union-attr]
    assert all(s["sha256"] is None for s in public["sources"])  # type: ignore[union-attr]
    assert "no checksums" in str(card.params["checksums"])
    # 117 classes with TotalSegmentator's names; parts map by TotalSegmentator's part class maps.
    assert {k: v for k, v in card.labels.items() if k} == map_to_binary.class_map["total"]
    assert len(card.labels) == 118
    for part in tasks.parts(card):
        part_map = map_to_binary.class_map_5_parts[
            map_to_binary.map_taskid_to_partname_ct[part["dataset_id"]]
        ]
        assert {int(k): v for k, v in part["labels"].items()} == part_map
    for status in statuses.values():
        if status.card.id.startswith("totalseg-"):
            task = status.card.params["totalseg_task"]
            assert task not in map_to_binary.commercial_models
            assert f"task '{task}': open weights" in status.card.licence


def test_pull_rejects_a_pinned_checksum_mismatch_and_escaping_archives(
    release: tuple[str, Path], tmp_path: Path
) -> None:
    base, _ = release
    card = tasks.task_card("totalseg-total-fast")
    part = tasks.parts(card)[0]
    wrong = {**part, "sha256": "0" * 64}
    pinned = card.__class__(**{**card.__dict__, "params": {**card.params, "parts": [wrong]}})
    original = tasks.task_card
    tasks.task_card = lambda _id: pinned  # type: ignore[assignment]
    try:
        with pytest.raises(InstallError, match="the card pins"):
            pull.pull(card.id, tmp_path, base=base)
    finally:
        tasks.task_card = original  # type: ignore[assignment]
    assert not tasks.home_dir(tmp_path, card.id).exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(InstallError, match="refusing"):
        pull._safe_extract(evil, tmp_path / "x")


# TotalSegmentator's own run costs about 30 s per part model here (nnU-Net starts two spawned worker
# processes per part), so the five-part comparison (about 2.5 min) runs when SEGSERVE_TOTALSEG_REFERENCE=1;
# by default the five-part task runs through our pipeline only and the one-part --fast task is compared.
FULL_REFERENCE = os.environ.get("SEGSERVE_TOTALSEG_REFERENCE") == "1"


@pytest.mark.parametrize(
    ("card_id", "fast", "compare"),
    [("totalseg-total", False, FULL_REFERENCE), ("totalseg-total-fast", True, True)],
)
def test_pull_and_run_equal_totalsegmentator(
    card_id: str, fast: bool, compare: bool, release: tuple[str, Path], ct_crop: Path, tmp_path: Path
) -> None:
    from models.totalseg.predictor import TotalSegPredictor
    from segserve.scans.readers import read_image

    base, root = release
    models_dir = tmp_path / "models"
    _pull_with_cli(card_id, models_dir, base)

    # The layout TotalSegmentator expects: <TOTALSEG_HOME_DIR>/nnunet/results/DatasetNNN_.../<trainer>__...
    status = Catalog(models_dir).status(card_id)
    assert status.available, status.reason
    card = status.card
    home = tasks.home_dir(models_dir, card_id)
    manifest = json.loads((home / MANIFEST).read_text())
    for part in tasks.parts(card):
        folder = (
            home
            / "nnunet"
            / "results"
            / part["folder"]
            / (f"{card.params['trainer']}__nnUNetPlans__3d_fullres")
        )
        assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
        served = root / part["release"] / f"{part['folder']}.zip"
        url = f"{base}/{part['release']}/{part['folder']}.zip"
        assert manifest["sources"][url]["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()

    predictor = TotalSegPredictor.load(card, models_dir)
    volume = read_image([ct_crop])
    progress: list[float] = []
    ours = predictor.predict(volume, on_progress=progress.append)
    assert ours.shape == volume.shape and ours.dtype == np.uint8
    assert progress and progress[-1] == pytest.approx(1.0) and progress == sorted(progress)

    if compare:
        weights = home / "nnunet" / "results"
        theirs = _totalsegmentator_reference(ct_crop, weights, tmp_path / "ts.nii.gz", fast)
        assert theirs.shape == ours.shape
        assert np.array_equal(ours, theirs.astype(np.uint8)), f"{np.mean(ours != theirs):.4%} differ"
    # The merge did something to test: labels from every part model are in the result.
    present = set(np.unique(ours).tolist()) - {0}
    assert present <= set(card.labels)
    inverse = {name: value for value, name in card.labels.items()}
    for part in tasks.parts(card):
        part_values = {inverse[name] for name in part["labels"].values()}
        assert present & part_values, f"no label of part {part['dataset_id']} in the result"


def test_tilted_lps_scan_equals_totalsegmentator(
    release: tuple[str, Path], ct_crop: Path, tmp_path: Path
) -> None:
    """The real CT crop re-stored LPS with its axes permuted (k, i, j), 2.5 mm voxels and tilted by 20
    degrees: the --fast task resamples it (to 3 mm), reorients it and back, and the labels equal
    TotalSegmentator's python_api on it."""
    import nibabel as nib

    from models.totalseg.predictor import TotalSegPredictor
    from segserve.scans.readers import read_image

    base, _ = release
    pull.pull("totalseg-total-fast", tmp_path / "models", base=base)
    card = Catalog(tmp_path / "models").status("totalseg-total-fast").card
    crop: Any = nib.load(ct_crop)
    data = np.asarray(crop.dataobj)
    n = np.array(data.shape)
    to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    to_lps[:2, 3] = n[:2] - 1
    permute = np.eye(4)[[2, 0, 1, 3]].T  # stored voxel (k, i, j) -> (i, j, k)
    t = np.deg2rad(20.0)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    affine = tilt @ crop.affine @ np.diag([2.5 / 3, 2.5 / 3, 2.5 / 3, 1.0]) @ to_lps @ permute
    stored = np.ascontiguousarray(data[::-1, ::-1].transpose(2, 0, 1)).astype(np.int16)
    scan = tmp_path / "tilted.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), scan)
    assert nib.aff2axcodes(affine) != ("R", "A", "S")

    ours = TotalSegPredictor.load(card, tmp_path / "models").predict(read_image([scan]))
    weights = tasks.home_dir(tmp_path / "models", card.id) / "nnunet" / "results"
    theirs = _totalsegmentator_reference(scan, weights, tmp_path / "ts.nii.gz", True)
    assert ours.shape == stored.shape
    assert np.array_equal(ours, theirs.astype(np.uint8)), f"{np.mean(ours != theirs):.4%} differ"
    assert len(np.unique(ours)) > 3


def test_cancel_stops_within_a_tile(release: tuple[str, Path], ct_crop: Path, tmp_path: Path) -> None:
    from models.totalseg.predictor import TotalSegPredictor
    from segserve.scans.readers import read_image

    base, _ = release
    pull.pull("totalseg-total-fast", tmp_path, base=base)
    card = Catalog(tmp_path).status("totalseg-total-fast").card
    predictor = TotalSegPredictor.load(card, tmp_path)
    progress: list[float] = []
    checks: list[int] = []

    def cancelled() -> bool:  # False before the part starts, True at its first tile
        checks.append(1)
        return len(checks) >= 2

    with pytest.raises(Cancelled):
        predictor.predict(read_image([ct_crop]), on_progress=progress.append, is_cancelled=cancelled)
    assert progress == []  # the network never ran
    # A changed weight file makes the task unavailable.
    checkpoint = next(tasks.home_dir(tmp_path, card.id).rglob("checkpoint_final.pth"))
    checkpoint.write_bytes(checkpoint.read_bytes() + b"x")
    status = Catalog(tmp_path).status(card.id)
    assert not status.available and "checkpoint_final.pth" in str(status.reason)


def test_pull_command_refuses_unknown_names_and_cleans_up_after_a_failed_download(
    release: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shell.models_cmd import pull_totalseg as pull_command

    assert pull_command("totalseg-nope", tmp_path) == 2
    assert "totalseg-total" in capsys.readouterr().err  # the known ids are named
    base, _ = release
    assert pull_command("totalseg-total-mr", tmp_path, base=base) == 2  # not on the server: 404
    assert "404" in capsys.readouterr().err
    assert not tasks.home_dir(tmp_path, "totalseg-total-mr").exists()
    assert list((tmp_path / tasks.FOLDER).iterdir()) == []  # no staging folder left behind
