"""GET /metrics over real HTTP after real jobs, and a data directory on a small real filesystem (tmpfs, or
a loop-mounted ext4 image) that fills up: uploads refused with 507, a job that cannot write its result
failed with disk_full, nothing partial left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, wait_for, wait_job
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"
MiB = 2**20
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str, token: str) -> Samples:
    resp = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = resp.json()
    assert body["code"] == code, body
    return body


def test_metrics_need_an_admin_key(stack: Stack) -> None:
    url = f"{stack.base_url}/metrics"
    _problem(httpx.get(url), 401, "missing_api_key")
    _problem(httpx.get(url, headers={"Authorization": "Bearer nonsense"}), 401, "invalid_api_key")
    with stack.client() as c:
        submitter = c.post("/v1/keys", json={"name": "metrics-test", "role": "submitter"}).json()["key"]
    _problem(httpx.get(url, headers={"Authorization": f"Bearer {submitter}"}), 403, "forbidden_role")
    assert httpx.get(url, headers={"X-API-Key": stack.admin_key}).status_code == 200


def test_metrics_count_real_jobs(stack: Stack, tmp_path: Path) -> None:
    """Scrape, run two real jobs through the worker, scrape again: the differences are exactly those jobs."""
    image, _ = brain_crop(tmp_path, size=32)
    before = scrape(stack.base_url, stack.admin_key)
    with stack.client() as c:
        ids = []
        for _ in range(2):
            resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        for job_id in ids:
            assert wait_job(c, job_id)["status"] == "succeeded"
    after = scrape(stack.base_url, stack.admin_key)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("segserve_jobs", status="succeeded") == 2
    assert value(after, "segserve_jobs", status="queued") >= 0
    assert delta("segserve_job_queue_wait_seconds_count", model=MODEL) == 2
    assert delta("segserve_job_run_seconds_count", model=MODEL, status="succeeded") == 2
    assert delta("segserve_job_run_seconds_bucket", model=MODEL, status="succeeded", le="+Inf") == 2
    assert delta("segserve_job_run_seconds_sum", model=MODEL, status="succeeded") > 0
    assert delta("segserve_job_duration_seconds_count", model=MODEL, status="succeeded") == 2
    for stage in ("read", "load", "predict", "write"):  # no reference given: no evaluate stage
        assert delta("segserve_job_stage_seconds_count", model=MODEL, stage=stage) == 2, stage
    assert delta("segserve_job_stage_seconds_sum", model=MODEL, stage="predict") > 0
    assert delta("segserve_job_stage_seconds_count", model=MODEL, stage="evaluate") == 0
    # The one API process wrote exactly the two image parts to disk.
    assert delta("segserve_upload_bytes_total", route="jobs") == 2 * image.stat().st_size
    assert value(after, "segserve_workers_alive") >= 1
    assert value(after, "segserve_database_up") == 1 and value(after, "segserve_broker_up") == 1
    assert ("segserve_queue_depth", (("priority", "routine"), ("queue", "cpu"))) in after


# ------------------------------------------------------------------------------------ a disk that fills


def _mount_small_fs(target: Path, size_mb: int) -> str:
    """Mount a `size_mb` filesystem at `target`: tmpfs, else a loop-mounted ext4 image. Returns which."""
    target.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = target.parent / "small-fs.img"
    steps = [
        ["truncate", "-s", f"{size_mb}M", str(image)],
        ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)],
        ["mount", "-o", "loop", str(image), str(target)],
    ]
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(
                f"cannot mount a small filesystem (tmpfs: {tmpfs.stderr.strip()}; "
                f"{step[0]}: {out.stderr.strip()}); the disk-full tests need root or CAP_SYS_ADMIN"
            )
    return "ext4"


def _fill(path: Path, leave_free: int) -> None:
    """Grow the ballast file `path` until its filesystem has about `leave_free` bytes free (0: full)."""
    free = shutil.disk_usage(path.parent).free - leave_free
    with path.open("ab", buffering=0) as fh:
        block = b"\0" * MiB
        while free > 0:
            free -= fh.write(block[: min(len(block), free)])
        if leave_free == 0:
            with pytest.raises(OSError) as full:  # to the last byte: the filesystem refuses every write
                while True:
                    fh.write(block[:4096])
            assert full.value.errno == errno.ENOSPC


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def small_disk_stack(tmp_path: Path) -> Iterator[Stack]:
    """API over a data directory on a 64 MiB filesystem of its own (SQLite database outside it), with a
    16 MiB reserve and a metrics token; the worker is left to the test to start."""
    require_shared()
    data = tmp_path / "data"
    _mount_small_fs(data, 64)
    env = {
        "SEGSERVE_REDIS_URL": redis_db(15),
        "SEGSERVE_MODELS_DIR": str(WEIGHTS),
        "SEGSERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'segserve.db'}",
        "SEGSERVE_MIN_FREE_DISK_MB": "16",
        "SEGSERVE_METRICS_TOKEN": "scrape-secret",
    }
    stack = Stack(tmp_path, env)
    try:
        created = stack.cli("keys", "create", "--name", "test admin", "--role", "admin").stdout
        stack.admin_key = json.loads(created)["key"]
        stack.start_api()
        yield stack
    finally:
        stack.stop()
        subprocess.run(["umount", str(data)], check=False)
        if os.path.ismount(data):
            subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_full_disk_refuses_uploads_and_fails_jobs_cleanly(small_disk_stack: Stack, tmp_path: Path) -> None:
    stack = small_disk_stack
    data = tmp_path / "data"
    staging = data / "staging"
    jobs_dir = data / "jobs"
    ballast = data / "ballast"
    image, _ = brain_crop(tmp_path, size=32)
    token = "scrape-secret"

    # The metrics token reads /metrics; no token or a wrong one does not.
    _problem(httpx.get(f"{stack.base_url}/metrics"), 401, "missing_api_key")
    _problem(
        httpx.get(f"{stack.base_url}/metrics", headers={"Authorization": "Bearer wrong"}),
        401,
        "invalid_api_key",
    )
    metrics = scrape(stack.base_url, token)
    assert value(metrics, "segserve_data_dir_reserve_bytes") == 16 * MiB
    assert value(metrics, "segserve_workers_alive") == 0

    with stack.client() as c:
        # 1. Below the reserve already: refused before the body is read.
        _fill(ballast, leave_free=10 * MiB)
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")})
        body = _problem(resp, 507, "disk_full")
        assert "reserve" in str(body["detail"])
        assert _files_under(staging) == [] and _files_under(jobs_dir) == []

        # 2. Above the reserve by 4 MiB, a 6 MiB upload of unknown length: stopped while it streams, and
        # its partial file removed.
        ballast.unlink()
        _fill(ballast, leave_free=20 * MiB)
        free_before = shutil.disk_usage(data).free

        def streamed():  # type: ignore[no-untyped-def]
            yield b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + MODEL.encode() + b"\r\n"
            yield b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="big.nii.gz"\r\n\r\n'
            for _ in range(24):
                yield b"\1" * (256 * 1024)
            yield b"\r\n--XyZ--\r\n"

        resp = c.post(
            "/v1/jobs", content=streamed(), headers={"content-type": "multipart/form-data; boundary=XyZ"}
        )
        _problem(resp, 507, "disk_full")
        assert _files_under(staging) == [] and _files_under(jobs_dir) == []
        assert abs(shutil.disk_usage(data).free - free_before) < MiB
        assert c.get("/v1/jobs").json()["total"] == 0

        # 3. With room again a job is accepted; the disk then fills completely before a worker takes it.
        ballast.unlink()
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        metrics = scrape(stack.base_url, token)
        assert value(metrics, "segserve_queue_depth", queue="cpu", priority="routine") == 1
        assert value(metrics, "segserve_jobs", status="queued") == 1
        inputs = _files_under(jobs_dir / job_id)
        _fill(ballast, leave_free=0)
        with pytest.raises(OSError):
            (data / "probe").write_bytes(b"\0" * 65536)
        (data / "probe").unlink(missing_ok=True)

        stack.start_worker()
        done = wait_job(c, job_id, timeout=300)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "disk_full", done
        assert "disk is full" in done["error"]["message"]
        # No result, no temporary file: only the input is left.
        assert _files_under(jobs_dir / job_id) == inputs
        metrics = wait_for(
            lambda: (m := scrape(stack.base_url, token)) and value(m, "segserve_workers_alive") == 1 and m,
            30,
            "the worker in /metrics",
        )
        assert value(metrics, "segserve_job_failures_total", code="disk_full", model=MODEL) == 1
        assert value(metrics, "segserve_jobs", status="failed") == 1
        assert value(metrics, "segserve_queue_depth", queue="cpu", priority="routine") == 0
        assert value(metrics, "segserve_upload_bytes_total", route="jobs") >= image.stat().st_size

        # 4. Space freed: the same scan goes through.
        ballast.unlink()
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")})
        assert resp.status_code == 202, resp.text
        assert wait_job(c, resp.json()["id"])["status"] == "succeeded"
