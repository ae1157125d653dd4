"""Batch evaluation over real HTTP and the CLI: folders of predictions against references, and an nnU-Net
layout dataset run through a catalog model as jobs on the queue."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from evaluation.lesion_report import lesionwise_report
from evaluation.lesion_summary import compact
from evaluation.report import evaluate_case
from tests.support.stack import Stack, wait_for
from tests.support.volumes import SUBJECT_A

pytestmark = pytest.mark.e2e
DATASET_LABELS = {"background": 0, "white_matter": 1, "cortex": 2, "thalamus": 3}
MODEL_TO_DATASET = {1: 1, 2: 2, 7: 3}  # brain-mri-structures values -> dataset values


def _crop(path: Path, start: tuple[int, int, int], size: int) -> nib.Nifti1Image:
    img = nib.load(path)
    sl = tuple(slice(s, s + size) for s in start)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array(start) + img.affine[:3, 3]
    return nib.Nifti1Image(np.asarray(img.dataobj)[sl].astype(np.uint8), affine)


def _to_dataset_labels(ref18: np.ndarray) -> np.ndarray:
    out = np.zeros_like(ref18)
    for model_value, dataset_value in MODEL_TO_DATASET.items():
        out[ref18 == model_value] = dataset_value
    return out


def _write_dataset_json(folder: Path) -> None:
    meta = {
        "name": "brain-crops",
        "labels": DATASET_LABELS,
        "channel_names": {"0": "T1"},
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def folders(stack: Stack) -> Path:
    """references/ and predictions/ under the datasets dir: 3 cases whose predictions are the references
    shifted by a few voxels, plus one case whose prediction lies on another grid."""
    root = stack.datasets / "folders"
    (root / "references").mkdir(parents=True)
    (root / "predictions").mkdir()
    _write_dataset_json(root)
    for i, start in enumerate([(80, 80, 80), (100, 90, 70), (70, 110, 100)]):
        ref = _crop(SUBJECT_A / "ref18.nii.gz", start, 48)
        ref_data = _to_dataset_labels(np.asarray(ref.dataobj))
        nib.save(nib.Nifti1Image(ref_data, ref.affine), root / "references" / f"case_{i}.nii.gz")
        pred = np.roll(ref_data, shift=i + 1, axis=i % 3)
        nib.save(nib.Nifti1Image(pred, ref.affine), root / "predictions" / f"case_{i}.nii.gz")
    ref = _crop(SUBJECT_A / "ref18.nii.gz", (90, 90, 90), 40)
    nib.save(nib.Nifti1Image(np.asarray(ref.dataobj), ref.affine), root / "references" / "case_bad.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((40, 40, 30), np.uint8), ref.affine),
        root / "predictions" / "case_bad.nii.gz",
    )
    return root


def _wait_evaluation(stack: Stack, evaluation_id: str, timeout: float = 300) -> dict:  # type: ignore[type-arg]
    with stack.client() as c:
        return dict(
            wait_for(
                lambda: (
                    (e := c.get(f"/v1/evaluations/{evaluation_id}").json())["status"]
                    in ("succeeded", "failed")
                    and e
                ),
                timeout,
                f"evaluation {evaluation_id}",
                interval=0.5,
            )
        )


def test_folders_evaluation_over_the_api(stack: Stack, folders: Path) -> None:
    with stack.client() as admin:
        researcher = admin.post("/v1/keys", json={"name": "lab", "role": "researcher"}).json()["key"]
        submitter = admin.post("/v1/keys", json={"name": "pacs", "role": "submitter"}).json()["key"]
    # thalamus (3) scored lesion-wise too: its two sides are two components per case
    body = {"predictions": "folders/predictions", "references": "folders/references", "lesion_labels": [3]}
    with stack.client(submitter) as c:
        assert c.post("/v1/evaluations", json=body).status_code == 403
    with stack.client(researcher) as c:
        resp = c.post("/v1/evaluations", json=body)
        assert resp.status_code == 202, resp.text
        done = _wait_evaluation(stack, resp.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["n_cases"] == 4 and done["progress"] == 1.0
        summary = c.get(done["links"]["outputs"]["summary.json"]).json()
        report = c.get(done["links"]["outputs"]["report.html"]).text
        rows = list(csv.DictReader(io.StringIO(c.get(done["links"]["outputs"]["cases.csv"]).text)))
    assert set(summary) >= {"metric_per_case", "mean", "foreground_mean"}
    assert summary["failed_cases"] == ["case_bad"]
    bad = next(case for case in summary["metric_per_case"] if case["case_id"] == "case_bad")
    assert "40x40x30" in bad["error"] and "40x40x40" in bad["error"]
    # each case's values equal a direct computation on the same arrays
    for case in summary["metric_per_case"]:
        if case["error"]:
            continue
        ref = nib.load(folders / "references" / f"{case['case_id']}.nii.gz")
        pred = nib.load(folders / "predictions" / f"{case['case_id']}.nii.gz")
        direct = evaluate_case(
            np.asarray(pred.dataobj),
            np.asarray(ref.dataobj),
            {1: "wm", 2: "cortex", 3: "thalamus"},
            (1, 1, 1),
        )
        for row in direct["structures"]:
            got = case["metrics"][str(row["label"])]
            assert got["Dice"] == pytest.approx(row["dice"], abs=1e-12)
            assert got["HD95"] == pytest.approx(row["hd95_mm"], rel=1e-6)  # spacing from a float32 affine
        lesionwise = compact(
            lesionwise_report(
                np.asarray(pred.dataobj),
                np.asarray(ref.dataobj),
                {1: "white_matter", 2: "cortex", 3: "thalamus"},
                [3],
                ref.affine,
                (1.0, 1.0, 1.0),
            )
        )
        got_lesions, want = case["lesionwise"]["thalamus"], lesionwise["thalamus"]
        assert got_lesions["tp"] == want["tp"] > 0
        assert got_lesions["lesionwise_dice"] == pytest.approx(want["lesionwise_dice"])
    assert summary["lesionwise"]["thalamus"]["tp"] == sum(
        c["lesionwise"]["thalamus"]["tp"] for c in summary["metric_per_case"] if not c["error"]
    )
    assert summary["mean"]["1"]["Dice"] == pytest.approx(
        np.mean([c["metrics"]["1"]["Dice"] for c in summary["metric_per_case"] if not c["error"]])
    )
    assert "<svg" in report and "case_bad" in report and "<script" not in report
    assert len([r for r in rows if r["case_id"] != "case_bad"]) == 9 and any(r["error"] for r in rows)


def test_evaluation_requests_are_validated(stack: Stack, folders: Path) -> None:
    with stack.client() as c:
        outside = c.post(
            "/v1/evaluations", json={"predictions": "../../", "references": "folders/references"}
        )
        assert outside.status_code == 422 and "outside" in outside.json()["detail"]
        both = c.post("/v1/evaluations", json={"predictions": "a", "dataset": "b"})
        assert both.status_code == 422
        missing = c.post("/v1/evaluations", json={"dataset": "folders", "model": "nope"})
        assert missing.status_code == 422
        assert c.get("/v1/evaluations/nope").status_code == 404
        not_a_label = c.post(
            "/v1/evaluations",
            json={
                "predictions": "folders/predictions",
                "references": "folders/references",
                "lesion_labels": [9],
            },
        )
        assert not_a_label.status_code == 422 and not_a_label.json()["code"] == "invalid_lesion_labels"


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> Path:
    """A 2-case nnU-Net v2 dataset: 64³ crops of subject-a with 3 labels of their own."""
    root = stack.datasets / "Dataset001_BrainCrops"
    (root / "imagesTs").mkdir(parents=True)
    (root / "labelsTs").mkdir()
    _write_dataset_json(root)
    for i, start in enumerate([(96, 96, 96), (96, 80, 100)]):
        nib.save(_crop(SUBJECT_A / "norm.mgz", start, 64), root / "imagesTs" / f"brain_{i:03d}_0000.nii.gz")
        ref = _crop(SUBJECT_A / "ref18.nii.gz", start, 64)
        labels = _to_dataset_labels(np.asarray(ref.dataobj))
        nib.save(nib.Nifti1Image(labels, ref.affine), root / "labelsTs" / f"brain_{i:03d}.nii.gz")
    return root


def test_dataset_through_a_model_as_jobs(stack: Stack, dataset: Path, tmp_path: Path) -> None:
    body = {"dataset": dataset.name, "model": "brain-mri-structures", "label_map": MODEL_TO_DATASET}
    with stack.client() as c:
        wrong = c.post("/v1/evaluations", json={**body, "label_map": {"99": 1}})
        assert wrong.status_code == 422 and "99" in wrong.json()["detail"]
        resp = c.post("/v1/evaluations", json=body)
        assert resp.status_code == 202, resp.text
        done = _wait_evaluation(stack, resp.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["cases_finished"] == 2
        summary = c.get(done["links"]["outputs"]["summary.json"]).json()
        jobs = [j for j in c.get("/v1/jobs", params={"limit": 200}).json()["items"]]
    assert summary["failed_cases"] == [] and summary["n_cases"] == 2
    assert summary["labels"] == {"1": "white_matter", "2": "cortex", "3": "thalamus"}
    # the summary equals metrics recomputed from each job's own result, after the label mapping
    by_case = {case["case_id"]: case for case in summary["metric_per_case"]}
    case_jobs = [j for j in jobs if j["status"] == "succeeded" and j["input"]["shape"] == [64, 64, 64]]
    checked = 0
    for job_id in {j["id"] for j in case_jobs}:
        with stack.client() as c:
            content = c.get(f"/v1/jobs/{job_id}/result").content
        out = tmp_path / f"{job_id}.nii.gz"
        out.write_bytes(content)
        pred = np.asarray(nib.load(out).dataobj)
        mapped = np.zeros_like(pred)
        for model_value, dataset_value in MODEL_TO_DATASET.items():
            mapped[pred == model_value] = dataset_value
        for case_id, case in by_case.items():
            ref = np.asarray(nib.load(dataset / "labelsTs" / f"{case_id}.nii.gz").dataobj)
            direct = evaluate_case(mapped, ref, {1: "a", 2: "b", 3: "c"}, (1, 1, 1))
            if all(
                (case["metrics"][str(r["label"])]["Dice"] or 0) == pytest.approx(r["dice"] or 0)
                for r in direct["structures"]
            ):
                checked += 1
    assert checked >= 2


def test_cli_evaluates_folders_with_a_progress_bar(stack: Stack, folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = stack.cli(
        "evaluate",
        "--predictions",
        str(folders / "predictions"),
        "--references",
        str(folders / "references"),
        "--out",
        str(out),
        check=False,
    )
    assert result.returncode == 1, result.stderr  # one case failed: its grid differs
    assert "4/4" in result.stderr and "40x40x30" in result.stderr
    assert {p.name for p in out.iterdir()} >= {"summary.json", "cases.csv", "report.html"}


def test_cli_runs_a_dataset_through_the_service(stack: Stack, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = stack.cli(
        "evaluate",
        "--dataset",
        str(dataset),
        "--model",
        "brain-mri-structures",
        "--label-map",
        json.dumps(MODEL_TO_DATASET),
        "--api",
        stack.base_url,
        "--key",
        stack.admin_key,
        "--out",
        str(out),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["foreground_mean"]["Dice"] is not None
