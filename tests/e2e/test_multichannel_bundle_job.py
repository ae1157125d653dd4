"""A multi-channel, sigmoid MONAI bundle (BraTS-like: T1c, T1, T2, FLAIR in; TC, WT, ET out) through the
real stack: installed with `segserve models install`, one form part per channel, the exact label map back;
wrong channel parts are refused with 422 and leave nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.testing.make_multichannel_bundle import brats_like_case, write_brats_like_bundle
from tests.support.stack import Stack, wait_job

pytestmark = pytest.mark.e2e
MODEL = "brats_like_test"
CHANNELS = ("t1c", "t1", "t2", "flair")
# An oblique grid (rotated about S, anisotropic): the result must come back on exactly this grid.
_C, _S = np.cos(0.3), np.sin(0.3)
AFFINE = np.array([[1.2 * _C, -_S, 0, -20], [1.2 * _S, _C, 0, 10], [0, 0, 1.5, -30], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def case(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], np.ndarray, Path]:
    """The bundle installed into the stack's models dir; the case's channel files, expected labels and
    expected labels as a NIfTI reference."""
    tmp = tmp_path_factory.mktemp("brats_like")
    stack.cli("models", "install", "--trust-code", str(write_brats_like_bundle(tmp / MODEL)))
    channels, expected = brats_like_case()
    paths = {}
    for name, data in zip(CHANNELS, channels, strict=True):
        paths[name] = tmp / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, AFFINE), paths[name])
    reference = tmp / "reference.nii.gz"
    nib.save(nib.Nifti1Image(expected, AFFINE), reference)
    return paths, expected, reference


def _parts(paths: dict[str, Path], names: tuple[str, ...] = CHANNELS) -> list[tuple[str, tuple[str, bytes]]]:
    return [(f"image.{n}", (f"{n}.nii.gz", paths[n].read_bytes())) for n in names]


def test_channels_in_the_catalog_and_a_job_gives_the_exact_label_map(
    stack: Stack, case: tuple[dict[str, Path], np.ndarray, Path], tmp_path: Path
) -> None:
    paths, expected, reference = case
    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == MODEL)
        assert card["available"] is True, card
        assert card["input"]["channels"] == list(CHANNELS)
        assert card["labels"] == {
            "0": "background",
            "1": "Tumor core",
            "2": "Whole tumor",
            "4": "Enhancing tumor",
        }
        assert card["executes_code"] is True
        # the parts in another order than the model's: the form names, not the order, say which is which
        parts = [*reversed(_parts(paths)), ("reference", ("ref.nii.gz", reference.read_bytes()))]
        resp = c.post("/v1/jobs", data={"model": MODEL}, files=parts)
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"], timeout=60)
        assert done["status"] == "succeeded", done
        assert done["input"]["shape"] == list(expected.shape)
        result = tmp_path / "labels.nii.gz"
        result.write_bytes(c.get(f"/v1/jobs/{done['id']}/result").content)
        shown = tmp_path / "image.nii.gz"
        shown.write_bytes(c.get(f"/v1/jobs/{done['id']}/image").content)
        metrics = c.get(f"/v1/jobs/{done['id']}/metrics").json()
    labels = nib.load(result)
    np.testing.assert_allclose(labels.affine, AFFINE, atol=1e-5)
    assert np.array_equal(np.asarray(labels.dataobj), expected)
    # the viewer's scan is the first channel (T1c)
    assert np.array_equal(np.asarray(nib.load(shown).dataobj), np.asarray(nib.load(paths["t1c"]).dataobj))
    assert {r["label"]: r["dice"] for r in metrics["structures"]} == {1: 1.0, 2: 1.0, 4: 1.0}
    # every channel and the reference were mapped from what the API decoded, not decoded again
    logs = "\n".join(p.log_path.read_text(errors="replace") for p in stack.workers)
    assert f"job {done['id']}: input mapped from its decoded copy" in logs


@pytest.fixture
def no_leftovers(stack: Stack) -> Iterator[None]:
    """Asserts that the test created no job and left nothing in storage."""
    jobs_dir, staging = stack.tmp / "data" / "jobs", stack.tmp / "data" / "staging"
    with stack.client() as c:
        before = c.get("/v1/jobs").json()["total"]
    files_before = sorted(jobs_dir.glob("*"))
    yield
    with stack.client() as c:
        assert c.get("/v1/jobs").json()["total"] == before
    assert sorted(jobs_dir.glob("*")) == files_before
    assert sorted(staging.glob("*")) == []


def _refused(stack: Stack, parts: list[tuple[str, tuple[str, bytes]]], code: str, model: str = MODEL) -> str:
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": model}, files=parts)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code, body
    return str(body["detail"])


def test_wrong_channel_parts_are_refused(
    stack: Stack, case: tuple[dict[str, Path], np.ndarray, Path], tmp_path: Path, no_leftovers: None
) -> None:
    paths, _, _ = case
    detail = _refused(stack, _parts(paths, ("t1c", "t1", "t2")), "missing_channel")
    assert "image.flair" in detail and "image.t1c, image.t1, image.t2, image.flair" in detail
    extra = [*_parts(paths), ("image.dwi", ("dwi.nii.gz", paths["t1"].read_bytes()))]
    assert "image.dwi" in _refused(stack, extra, "unexpected_channel")
    plain = [("image", ("t1c.nii.gz", paths["t1c"].read_bytes()))]
    assert "image.t1c" in _refused(stack, plain, "channels_required")
    assert "image.t1c" in _refused(
        stack, _parts(paths, ("t1c",)), "unexpected_channel", "brain-mri-structures"
    )

    other_grid = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 28), np.int16), AFFINE), other_grid)
    parts = [*_parts(paths, ("t1c", "t1", "t2")), ("image.flair", ("flair.nii.gz", other_grid.read_bytes()))]
    detail = _refused(stack, parts, "grid_mismatch")
    assert "channel 'flair' grid 40x36x28" in detail and "channel 't1c' grid 40x36x30" in detail


def test_routes_with_one_image_per_case_refuse_a_multi_channel_model(
    stack: Stack, case: tuple[dict[str, Path], np.ndarray, Path], no_leftovers: None
) -> None:
    """STOW-RS series and dataset evaluations bring one image per case: 422 at once, not a failed job."""
    with stack.client() as c:
        stow = c.post(
            f"/dicomweb/{MODEL}/studies",
            content=b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b--\r\n",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
        evaluation = c.post("/v1/evaluations", json={"dataset": "any", "model": MODEL})
    for resp in (stow, evaluation):
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"] == "multi_channel_model"
        assert "(t1c, t1, t2, flair)" in resp.json()["detail"]
