"""Stopping processes without losing work: a worker told to stop (SIGTERM) hands its running job back to
the queue at once, and an API told to stop finishes the uploads in flight."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Proc, Stack, wait_for, wait_job
from tests.support.volumes import SUBJECT_A

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


def _job_worker(stack: Stack, job_id: str) -> str | None:
    """The `worker` column of a job (hostname `cpu-<pid>@host:<task id>`), read from the stack's SQLite."""
    with sqlite3.connect(stack.tmp / "data" / "segserve.db") as db:
        row = db.execute("SELECT worker FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else row[0]


def _owner(stack: Stack, job_id: str) -> Proc:
    name = _job_worker(stack, job_id) or ""
    return next(w for w in stack.workers if name.startswith(f"cpu-{w.pid}@"))


def _broker_holds(url: str, prefix: str, list_name: str, job_id: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return any(job_id.encode() in message for message in client.lrange(prefix + list_name, 0, -1))
    finally:
        client.close()


def test_sigterm_hands_the_running_job_back(tmp_path: Path) -> None:
    require_shared()
    url = redis_db(5)
    # Lease and recovery far beyond the test: the job can only come back through the hand-back.
    env = {
        "SEGSERVE_REDIS_URL": url,
        "SEGSERVE_MODELS_DIR": str(WEIGHTS),
        "SEGSERVE_LEASE_S": "600",
        "SEGSERVE_RECOVERY_INTERVAL_S": "600",
    }
    stack = Stack(tmp_path, env)
    try:
        stack.start()
        stack.start_worker()
        wait_for(lambda: all(" ready." in w.log_tail(300) for w in stack.workers), 120, "both workers")
        with stack.client() as c:
            image = (SUBJECT_A / "norm.mgz").read_bytes()
            resp = c.post("/v1/jobs", data={"model": MODEL, "priority": "stat"}, files={"image": image})
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.05, 120, "the forward pass")
            # Keep the other worker busy, so that the job waits on the broker after the hand-back.
            other = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image}).json()["id"]
            wait_for(lambda: c.get(f"/v1/jobs/{other}").json()["status"] == "running", 60, "the other job")

            stopping = _owner(stack, job_id)
            stopped_at = time.monotonic()
            stopping.popen.send_signal(signal.SIGTERM)
            queued = wait_for(
                lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"] == "queued" and j, 10, "hand-back"
            )
            handed_back_s = time.monotonic() - stopped_at
            assert queued["attempts"] == 0 and queued["progress"] == 0.0, queued
            assert handed_back_s < 5, f"handed back after {handed_back_s:.1f} s"
            assert _job_worker(stack, job_id) is None
            # The message is back on the broker, in the stat list (priority step 0: the queue's own name).
            prefix = stack.env["SEGSERVE_BROKER_KEY_PREFIX"]
            assert wait_for(lambda: _broker_holds(url, prefix, "cpu", job_id), 5, "the requeued message")
            stopping.popen.wait(timeout=15)
            exited_s = time.monotonic() - stopped_at
            assert stopping.popen.returncode == 0, stopping.log_tail()
            assert exited_s < 15, f"worker exited after {exited_s:.1f} s"
            assert "handed back to the queue" in stopping.log_tail(300)
            print(f"job queued again after {handed_back_s:.1f} s, worker exited after {exited_s:.1f} s")

            # The other worker takes it once its own job is done: long before any lease (600 s) runs out.
            done = wait_job(c, job_id, timeout=300)
            assert done["status"] == "succeeded", (done, stack.diagnostics())
            assert done["attempts"] == 1
            assert (_job_worker(stack, job_id) or "").startswith(
                f"cpu-{stack.workers[1 - stack.workers.index(stopping)].pid}@"
            )
            assert wait_job(c, other, timeout=300)["status"] == "succeeded"
            assert c.get(f"/v1/jobs/{job_id}/result").status_code == 200
    finally:
        stack.stop()
