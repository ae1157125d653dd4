"""Job state transitions against SQLite and PostgreSQL: exactly one claimant wins, leases expire,
cancellation and finishing respect ownership."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from segserve import jobs
from segserve.db import Job, JobStatus, new_session, utcnow


def _add_job(url: str, job_id: str) -> None:
    with new_session(url) as s:
        s.add(
            Job(
                id=job_id,
                model_id="m",
                model_version="1",
                queue="cpu",
                input_format="nifti",
                input_files=["0000.nii.gz"],
                image_shape=[2, 2, 2],
                image_spacing_mm=[1, 1, 1],
                submitted_by="k",
            )
        )
        s.commit()


def _get(url: str, job_id: str) -> Job:
    with new_session(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_only_one_of_many_concurrent_claims_wins(db_url: str) -> None:
    _add_job(db_url, "race")
    wins: list[str] = []
    barrier = threading.Barrier(6)

    def attempt(name: str) -> None:
        with new_session(db_url) as s:
            barrier.wait()
            if jobs.claim(s, "race", name, lease_s=60):
                wins.append(name)

    threads = [threading.Thread(target=attempt, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    job = _get(db_url, "race")
    assert job.status == "running" and job.worker == wins[0] and job.attempts == 1


def test_expired_lease_lets_another_worker_claim(db_url: str) -> None:
    _add_job(db_url, "lease")
    with new_session(db_url) as s:
        assert jobs.claim(s, "lease", "a", lease_s=60)
        assert not jobs.claim(s, "lease", "b", lease_s=60)
        assert jobs.renew(s, "lease", "a", 60, progress=0.5)
        assert not jobs.renew(s, "lease", "b", 60)
        s.execute(
            update(Job).where(Job.id == "lease").values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()
        assert [j.id for j in jobs.abandoned(s, include_queued=False)] == ["lease"]
        assert jobs.claim(s, "lease", "b", lease_s=60)
        # the old owner can neither renew nor finish any more
        assert not jobs.renew(s, "lease", "a", 60)
        assert not jobs.finish(s, "lease", "a", JobStatus.succeeded)
        assert jobs.finish(s, "lease", "b", JobStatus.succeeded)
    job = _get(db_url, "lease")
    assert job.status == "succeeded" and job.attempts == 2 and job.progress == 1.0


def test_finished_job_is_never_claimed_again(db_url: str) -> None:
    _add_job(db_url, "done")
    with new_session(db_url) as s:
        assert jobs.claim(s, "done", "a", lease_s=60)
        assert jobs.finish(s, "done", "a", JobStatus.failed, error="bad", error_code="x")
        assert not jobs.claim(s, "done", "b", lease_s=60)
        assert jobs.cancel(s, "done") is None
    assert _get(db_url, "done").error == "bad"


def test_cancel_queued_and_running(db_url: str) -> None:
    _add_job(db_url, "q")
    _add_job(db_url, "r")
    with new_session(db_url) as s:
        assert jobs.cancel(s, "q") is JobStatus.cancelled
        assert not jobs.claim(s, "q", "a", lease_s=60)
        assert jobs.claim(s, "r", "a", lease_s=60)
        assert jobs.cancel(s, "r") is JobStatus.running
    assert _get(db_url, "r").cancel_requested
    assert _get(db_url, "q").status == "cancelled"


def test_abandoned_lists_queued_only_on_request(db_url: str) -> None:
    _add_job(db_url, "waiting")
    with new_session(db_url) as s:
        assert jobs.abandoned(s, include_queued=False) == []
        assert [j.id for j in jobs.abandoned(s, include_queued=True)] == ["waiting"]


def test_release_hands_a_running_job_back_uncounted(db_url: str) -> None:
    _add_job(db_url, "stop")
    with new_session(db_url) as s:
        assert jobs.claim(s, "stop", "w1", lease_s=60)
        assert jobs.renew(s, "stop", "w1", 60, progress=0.4)
        assert not jobs.release(s, "stop", "w2")  # only the owner hands it back
        assert jobs.release(s, "stop", "w1")
    job = _get(db_url, "stop")
    assert job.status == JobStatus.queued.value
    assert (job.attempts, job.progress, job.worker, job.lease_expires_at) == (0, 0.0, None, None)
    assert job.started_at is None and job.enqueued_at is not None
    with new_session(db_url) as s:
        assert not jobs.release(s, "stop", "w1")  # queued now: nothing to hand back
        assert jobs.claim(s, "stop", "w2", lease_s=60)  # at once, no lease to wait for
    assert _get(db_url, "stop").attempts == 1


def test_release_leaves_a_cancel_request_to_the_worker(db_url: str) -> None:
    _add_job(db_url, "cancelme")
    with new_session(db_url) as s:
        assert jobs.claim(s, "cancelme", "w1", lease_s=60)
        assert jobs.cancel(s, "cancelme") is JobStatus.running
        assert not jobs.release(s, "cancelme", "w1")
    assert _get(db_url, "cancelme").status == JobStatus.running.value
