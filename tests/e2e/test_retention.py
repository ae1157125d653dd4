"""Retention with real processes: the API, a worker running jobs and a second worker on another queue, both
sweeping. Jobs that finished long ago (finished_at set back in the database) lose their files, a running
job, a queued job and a recent one keep theirs; file routes answer 410 files_deleted, the job stays
readable, the audit log keeps one deletion event per job beside the job's earlier events; an admin's
DELETE of a finished job removes its files at once and leaves the tombstone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from segserve.db import Job, get_engine, new_session, utcnow
from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Proc, Stack, segserve, wait_for, wait_job
from tests.support.volumes import SUBJECT_A, brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


def _submit(c: httpx.Client, image: Path, reference: Path | None = None) -> str:
    files = {"image": image.open("rb"), **({"reference": reference.open("rb")} if reference else {})}
    resp = c.post("/v1/jobs", data={"model": MODEL}, files=files)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _assert_gone(resp: httpx.Response) -> None:
    assert resp.status_code == 410, (resp.request.url, resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == "files_deleted" and body["status"] == 410 and body["files_deleted_at"]


def _finished_days_ago(database: str, job_ids: list[str], days: float) -> None:
    with new_session(database) as session:
        session.execute(
            update(Job).where(Job.id.in_(job_ids)).values(finished_at=utcnow() - timedelta(days=days))
        )
        session.commit()


def _deletions(c: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    resp = c.get("/v1/audit", params={"resource_id": job_id, "action": "job.files_deleted"})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["items"])


def test_retention_and_admin_delete(tmp_path: Path) -> None:
    require_shared()
    env = {
        "SEGSERVE_REDIS_URL": redis_db(5),
        "SEGSERVE_MODELS_DIR": str(WEIGHTS),
        "SEGSERVE_RETENTION_DAYS": "1",
        "SEGSERVE_RETENTION_INTERVAL_S": "1",
    }
    stack = Stack(tmp_path, env)
    database = f"sqlite:///{tmp_path / 'data' / 'segserve.db'}"
    jobs_dir = tmp_path / "data" / "jobs"
    crop, reference = brain_crop(tmp_path, size=32)
    sweeper: Proc | None = None
    try:
        stack.start()
        # A second worker on the gpu queue: it runs no job here, but sweeps the same database.
        sweeper = Proc("worker-gpu", segserve("worker", "--queue", "gpu"), stack.env, tmp_path)
        with stack.client() as c:
            old_a, old_b = _submit(c, crop, reference), _submit(c, crop)
            recent = _submit(c, crop, reference)
            for job_id in (old_a, old_b, recent):
                assert wait_job(c, job_id)["status"] == "succeeded", stack.diagnostics()
            # A reviewer's corrected labels (a label version file) and the viewer's volumes on old_a.
            labels = c.get(f"/v1/jobs/{old_a}/result").content
            saved = c.post(f"/v1/jobs/{old_a}/labels", content=labels)
            assert saved.status_code == 201, saved.text
            assert (jobs_dir / old_a / "result" / "labels.v1.nii.gz").exists()
            assert c.get(f"/v1/jobs/{old_a}/image").status_code == 200
            assert c.get(f"/v1/jobs/{old_a}/reference").status_code == 200

            # A whole 256³ scan keeps the one worker slot busy; the next job waits behind it.
            running = _submit(c, SUBJECT_A / "norm.mgz")
            wait_job(c, running, until=("running",))
            queued = _submit(c, crop)
            assert c.get(f"/v1/jobs/{queued}").json()["status"] == "queued"

            # Long ago, as far as the database says; for the unfinished two only their status protects them.
            _finished_days_ago(database, [old_a, old_b, running, queued], days=3)

            def swept() -> bool:
                return all(c.get(f"/v1/jobs/{j}").json()["files_deleted_at"] for j in (old_a, old_b))

            wait_for(swept, 60, "the retention to delete the old jobs' files")
            states = {j: c.get(f"/v1/jobs/{j}").json() for j in (running, queued, recent)}
            assert states[running]["status"] == "running", "the big job finished before the sweep"
            assert states[queued]["status"] == "queued"
            assert all(s["files_deleted_at"] is None for s in states.values()), states
            assert (jobs_dir / running / "input" / "image").is_dir()
            assert (jobs_dir / queued / "input" / "image").is_dir()
            assert not (jobs_dir / old_a).exists() and not (jobs_dir / old_b).exists()

            # The tombstone: the job is still there, its file routes are gone.
            job = c.get(f"/v1/jobs/{old_a}").json()
            assert job["status"] == "succeeded" and job["files_deleted_at"] is not None
            listed = {j["id"]: j for j in c.get("/v1/jobs", params={"limit": 200}).json()["items"]}
            assert listed[old_a]["files_deleted_at"] == job["files_deleted_at"]
            for path in (
                "result",
                "result?version=1",
                "result?format=dicom-seg",
                "metrics",
                "metrics?format=csv",
                "image",
                "reference",
                "labels/versions",
            ):
                _assert_gone(c.get(f"/v1/jobs/{old_a}/{path}"))
            _assert_gone(c.post(f"/v1/jobs/{old_a}/labels", content=labels))
            _assert_gone(c.post(f"/v1/jobs/{old_a}/review", json={"decision": "accepted"}))
            _assert_gone(c.get(f"/v1/jobs/{old_b}/result"))
            _assert_gone(c.get(f"/v1/jobs/{old_b}/image"))
            assert c.get(f"/v1/jobs/{old_a}/review").status_code == 200  # the history is in the database

            # One deletion event per job whichever worker won, and the job's earlier events are kept.
            for job_id in (old_a, old_b):
                events = _deletions(c, job_id)
                assert len(events) == 1, events
                assert events[0]["key_id"] is None
                assert events[0]["detail"] == {
                    "by": "retention",
                    "status": "succeeded",
                    "retention_days": 1.0,
                }
            history = [e["action"] for e in c.get("/v1/audit", params={"resource_id": old_a}).json()["items"]]
            assert "POST /v1/jobs" in history and "POST /v1/jobs/{job_id}/labels" in history

            # The unfinished jobs run to the end with their files, and then are recent.
            for job_id in (running, queued):
                assert wait_job(c, job_id, timeout=600)["status"] == "succeeded"
            assert c.get(f"/v1/jobs/{recent}/result").status_code == 200
            assert c.get(f"/v1/jobs/{recent}/metrics").status_code == 200
            assert c.get(f"/v1/jobs/{queued}/result").status_code == 200

            # An admin's DELETE of a finished job: files gone at once, the tombstone and an event stay.
            admin_id = next(k["id"] for k in c.get("/v1/keys").json() if k["name"] == "test admin")
            assert c.delete(f"/v1/jobs/{recent}").status_code == 204
            assert not (jobs_dir / recent).exists()
            assert c.get(f"/v1/jobs/{recent}").json()["files_deleted_at"] is not None
            _assert_gone(c.get(f"/v1/jobs/{recent}/result"))
            assert c.delete(f"/v1/jobs/{recent}").status_code == 204  # again: nothing more happens
            events = _deletions(c, recent)
            assert [(e["key_id"], e["detail"]["by"]) for e in events] == [(admin_id, "admin")]

            # A submitter's DELETE of a finished job still deletes the job itself (as before).
            made = c.post("/v1/keys", json={"name": "bridge", "role": "submitter"}).json()["key"]
        with stack.client(made) as submitter:
            assert submitter.delete(f"/v1/jobs/{running}").status_code == 204
            assert submitter.get(f"/v1/jobs/{running}").status_code == 404
        assert not (jobs_dir / running).exists()
        assert sweeper.alive(), sweeper.log_tail()
    finally:
        if sweeper is not None:
            sweeper.stop()
        stack.stop()
        get_engine(database).dispose()
