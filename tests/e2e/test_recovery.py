"""Nothing accepted is lost: a job whose worker is SIGKILLed mid-run completes once a worker is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, wait_for, wait_job
from tests.support.volumes import SUBJECT_A

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


def test_job_survives_sigkill_of_its_worker(tmp_path: Path) -> None:
    require_shared()
    stack = Stack(tmp_path, {"SEGSERVE_REDIS_URL": redis_db(12), "SEGSERVE_MODELS_DIR": str(WEIGHTS)})
    try:
        stack.start()
        with stack.client() as c:
            resp = c.post(
                "/v1/jobs", data={"model": MODEL}, files={"image": (SUBJECT_A / "norm.mgz").open("rb")}
            )
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            # Kill while the model runs (past reading and model loading: progress > 0.05).
            wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.05, 120, "the forward pass")
            stack.workers[0].kill_group()
            time.sleep(1)
            orphaned = c.get(f"/v1/jobs/{job_id}").json()
            assert orphaned["status"] == "running" and orphaned["attempts"] == 1

            stack.start_worker()
            done = wait_job(c, job_id, timeout=300)
            assert done["status"] == "succeeded", (done, stack.diagnostics())
            assert done["attempts"] == 2
            assert c.get(f"/v1/jobs/{job_id}/result").status_code == 200
    finally:
        stack.stop()


def test_queued_job_survives_broker_flush(tmp_path: Path) -> None:
    """A broker that lost its queue (restart without persistence): the worker's start-up pass publishes
    queued jobs again."""
    require_shared()
    import redis

    url = redis_db(13)
    stack = Stack(tmp_path, {"SEGSERVE_REDIS_URL": url, "SEGSERVE_MODELS_DIR": str(WEIGHTS)})
    try:
        stack.start()
        stack.workers[0].stop()
        with stack.client() as c:
            resp = c.post(
                "/v1/jobs", data={"model": MODEL}, files={"image": (SUBJECT_A / "norm.mgz").open("rb")}
            )
            job_id = resp.json()["id"]
            client = redis.Redis.from_url(url)
            prefix = stack.env["SEGSERVE_BROKER_KEY_PREFIX"]
            lost = [key for key in client.scan_iter(f"{prefix}*") if b"unacked" not in key]
            assert lost, "the queued message should be in the broker"
            client.delete(*lost)  # the queue is gone (only this test session's keys)
            stack.start_worker()
            done = wait_job(c, job_id, timeout=300)
            assert done["status"] == "succeeded", (done, stack.diagnostics())
    finally:
        stack.stop()
