"""Auth and bad input over real HTTP: every refusal is a problem document naming the problem, and no job
row or file is left behind."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.support.stack import Stack
from tests.support.volumes import SUBJECT_A, brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


def _problem(resp, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["detail"]
    return body


def _job_files(stack: Stack) -> list[Path]:
    return sorted((stack.tmp / "data" / "jobs").glob("*"))


def _staging(stack: Stack) -> list[Path]:
    return sorted((stack.tmp / "data" / "staging").glob("*"))


@pytest.fixture
def no_leftovers(stack: Stack):  # type: ignore[no-untyped-def]
    """Asserts that the test created no job and left nothing in storage."""
    with stack.client() as c:
        before = c.get("/v1/jobs").json()["total"]
    files_before = _job_files(stack)
    yield
    with stack.client() as c:
        assert c.get("/v1/jobs").json()["total"] == before
    assert _job_files(stack) == files_before
    assert _staging(stack) == []


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_upload_streams_to_disk_without_growing_memory(stack: Stack, no_leftovers: None) -> None:
    """A 40 MB upload must not raise the API's peak memory by anything like 40 MB (runs first in this
    module, before any test reads a volume in the API process)."""
    assert stack.api is not None
    size = 40 * 1024 * 1024
    before = _peak_rss_bytes(stack.api.pid)

    def body():  # type: ignore[no-untyped-def]
        yield b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + MODEL.encode() + b"\r\n"
        yield b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="x.nrrd"\r\n\r\n'
        block = bytes(range(256)) * 4096  # 1 MiB, not an image
        for _ in range(size // len(block)):
            yield block
        yield b"\r\n--XyZ--\r\n"

    with stack.client() as c:
        resp = c.post(
            "/v1/jobs", content=body(), headers={"content-type": "multipart/form-data; boundary=XyZ"}
        )
    _problem(resp, 415)
    grown = _peak_rss_bytes(stack.api.pid) - before
    assert grown < size / 4, (
        f"peak memory grew by {grown / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB upload"
    )


def test_healthz_needs_no_key(stack: Stack) -> None:
    import httpx

    assert httpx.get(f"{stack.base_url}/healthz").json() == {"status": "ok"}


def test_missing_and_invalid_keys_get_401(stack: Stack) -> None:
    import httpx

    body = _problem(httpx.get(f"{stack.base_url}/v1/jobs"), 401)
    assert "API key" in body["detail"]
    _problem(httpx.get(f"{stack.base_url}/v1/models", headers={"X-API-Key": "ssk_nope_nope"}), 401)


def test_x_api_key_header_works(stack: Stack) -> None:
    import httpx

    resp = httpx.get(f"{stack.base_url}/v1/models", headers={"X-API-Key": stack.admin_key})
    assert resp.status_code == 200


def test_wrong_role_gets_403(stack: Stack, tmp_path: Path, no_leftovers: None) -> None:
    with stack.client() as admin:
        reviewer = admin.post("/v1/keys", json={"name": "r", "role": "reviewer"}).json()["key"]
    image, _ = brain_crop(tmp_path)
    with stack.client(reviewer) as c:
        assert c.get("/v1/jobs").status_code == 200
        files = {"image": image.open("rb")}
        body = _problem(c.post("/v1/jobs", data={"model": MODEL}, files=files), 403)
        assert "reviewer" in body["detail"]
        _problem(c.post("/v1/keys", json={"name": "x", "role": "admin"}), 403)


def test_png_is_refused_by_name(stack: Stack, tmp_path: Path, no_leftovers: None) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="PNG")
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": ("scan.nii.gz", buf.getvalue())})
    body = _problem(resp, 415)
    assert "PNG" in body["detail"]


def test_truncated_nifti_is_refused(stack: Stack, no_leftovers: None) -> None:
    data = (SUBJECT_A / "ref18.nii.gz").read_bytes()
    with stack.client() as c:
        resp = c.post(
            "/v1/jobs", data={"model": MODEL}, files={"image": ("t.nii.gz", data[: len(data) // 2])}
        )
    body = _problem(resp, 422)
    assert "truncated" in body["detail"].lower() or "corrupt" in body["detail"].lower()


def test_2d_image_is_refused(stack: Stack, tmp_path: Path, no_leftovers: None) -> None:
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64), np.int16), np.eye(4)), path)
    with stack.client() as c:
        body = _problem(c.post("/v1/jobs", data={"model": MODEL}, files={"image": path.open("rb")}), 422)
    assert "2D" in body["detail"]


def _rgb(shape: tuple[int, int, int]) -> np.ndarray:
    rgb = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 100
    return rgb


def _with(values: list[float]) -> np.ndarray:
    array = np.linspace(0.0, 500.0, 24 * 24 * 16, dtype=np.float32).reshape(24, 24, 16)
    array.flat[: len(values)] = values
    return array


@pytest.mark.parametrize(
    ("array", "code", "named"),
    [
        (_rgb((24, 24, 16)), "unsupported_voxel_type", "RGB voxels"),
        (np.full((24, 24, 16), 1 + 2j, np.complex64), "unsupported_voxel_type", "complex voxels (complex64)"),
        (_with([np.nan] * 7), "non_finite_voxels", "7 NaN and 0 infinite voxels (of 9,216)"),
        (_with([np.inf, -np.inf, np.nan]), "non_finite_voxels", "1 NaN and 2 infinite voxels"),
    ],
    ids=["rgb", "complex", "nan", "infinite"],
)
def test_voxels_that_are_not_one_finite_number_are_refused_at_upload(
    stack: Stack, tmp_path: Path, no_leftovers: None, array: np.ndarray, code: str, named: str
) -> None:
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    with stack.client() as c:
        body = _problem(c.post("/v1/jobs", data={"model": MODEL}, files={"image": path.open("rb")}), 422)
    assert body["code"] == code and named in body["detail"], body


def test_reference_on_another_grid_is_refused(stack: Stack, tmp_path: Path, no_leftovers: None) -> None:
    image, _ = brain_crop(tmp_path, size=40)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((30, 40, 40), np.uint8), np.eye(4)), other)
    with stack.client() as c:
        resp = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files={"image": image.open("rb"), "reference": other.open("rb")},
        )
    body = _problem(resp, 422)
    assert "30x40x40" in body["detail"] and "40x40x40" in body["detail"]


def test_unknown_model_and_missing_fields(stack: Stack, tmp_path: Path, no_leftovers: None) -> None:
    image, _ = brain_crop(tmp_path, size=32)
    with stack.client() as c:
        body = _problem(c.post("/v1/jobs", data={"model": "nope"}, files={"image": image.open("rb")}), 422)
        assert "nope" in body["detail"] and MODEL in body["detail"]
        _problem(c.post("/v1/jobs", files={"image": image.open("rb")}), 422)
        _problem(c.post("/v1/jobs", data={"model": MODEL}, files={"other": image.open("rb")}), 422)
        _problem(c.post("/v1/jobs", data={"model": MODEL}), 415)  # a plain form is not multipart
        _problem(c.post("/v1/jobs", json={"model": MODEL}), 415)


def test_upload_over_the_limit_gets_413(stack: Stack, no_leftovers: None) -> None:
    # The stack's limit is set low (SEGSERVE_MAX_UPLOAD_BYTES); stream more than that without a length.
    limit = int(stack.env["SEGSERVE_MAX_UPLOAD_BYTES"])
    chunk = gzip.compress(b"\0" * 1024)

    def body():  # type: ignore[no-untyped-def]
        boundary = b"XyZ"
        yield b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + MODEL.encode() + b"\r\n"
        yield b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="big.nii.gz"\r\n\r\n'
        sent = 0
        while sent <= limit + 1024 * 1024:
            yield chunk * 64
            sent += len(chunk) * 64
        yield b"\r\n--" + boundary + b"--\r\n"

    with stack.client() as c:
        resp = c.post(
            "/v1/jobs", content=body(), headers={"content-type": "multipart/form-data; boundary=XyZ"}
        )
    _problem(resp, 413)


def test_unknown_job_is_404(stack: Stack) -> None:
    with stack.client() as c:
        body = _problem(c.get("/v1/jobs/doesnotexist"), 404)
        assert "doesnotexist" in body["detail"]
        _problem(c.get("/v1/jobs/doesnotexist/result"), 404)


def test_scan_no_worker_could_hold_is_refused_at_upload(stack: Stack, no_leftovers: None) -> None:
    """The stack's workers have SEGSERVE_WORKER_MEMORY_MB=4864 (tests/conftest.py): a 512x512x600 scan with
    MeshNet's working set does not fit, and the API says so with both sizes before storing anything."""
    data = gzip.compress(_nifti_bytes(np.zeros((512, 512, 600), dtype=np.uint8)), compresslevel=1)
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": ("big.nii.gz", data)})
    body = _problem(resp, 422)
    assert body["code"] == "insufficient_worker_memory"
    for part in ("512x512x600", "150 MiB", "4.8 GiB (SEGSERVE_WORKER_MEMORY_MB)", MODEL):
        assert part in body["detail"], body["detail"]


def _nifti_bytes(array: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array, np.eye(4))
    return bytes(image.to_bytes())
