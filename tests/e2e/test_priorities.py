"""Stat before routine with a real broker and real worker processes; a queued job's place and estimated
start; recovery re-publishing queued jobs with their priorities. The stack starts on a database made
before job priorities existed (init_db's migration)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from segserve.db import get_engine
from tests.conftest import redis_db
from tests.support.legacy_db import make_pre_priority_database
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, wait_for, wait_job
from tests.support.volumes import SUBJECT_A, brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"
OLD_RUN_S = 30.0  # the old database's one succeeded run of MODEL: the estimate's only history at first


def _submit(c: httpx.Client, image: Path, priority: str | None = None) -> str:
    data = {"model": MODEL, **({"priority": priority} if priority else {})}
    resp = c.post("/v1/jobs", data=data, files={"image": image.open("rb")})
    assert resp.status_code == 202, resp.text
    assert resp.json()["priority"] == (priority or "routine")
    return str(resp.json()["id"])


def _started(c: httpx.Client, job_ids: list[str]) -> list[str]:
    """The jobs in the order they started, once all have succeeded."""
    done = {j: wait_job(c, j, timeout=600) for j in job_ids}
    assert all(d["status"] == "succeeded" for d in done.values()), done
    return sorted(job_ids, key=lambda j: datetime.fromisoformat(done[j]["started_at"]))


def _at(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def test_stat_jobs_overtake_queued_routine_jobs(tmp_path: Path) -> None:
    require_shared()
    database = f"sqlite:///{tmp_path / 'data' / 'segserve.db'}"
    (tmp_path / "data").mkdir()
    old_id = make_pre_priority_database(database, model_id=MODEL, run_s=OLD_RUN_S)
    get_engine(database).dispose()
    url = redis_db(7)
    stack = Stack(tmp_path, {"SEGSERVE_REDIS_URL": url, "SEGSERVE_MODELS_DIR": str(WEIGHTS)})
    crop, _ = brain_crop(tmp_path, size=64)
    try:
        stack.start()  # one worker process, one slot
        with stack.client() as c:
            old = c.get(f"/v1/jobs/{old_id}").json()
            assert old["priority"] == "routine" and old["waiting"] is None

            # The only worker is busy with a whole scan while routine jobs queue up, then a stat job comes.
            blocker = _submit(c, SUBJECT_A / "norm.mgz")
            wait_for(lambda: c.get(f"/v1/jobs/{blocker}").json()["status"] == "running", 120, "the blocker")
            routine = [_submit(c, crop) for _ in range(3)]
            stat = _submit(c, crop, "stat")
            views = {j: c.get(f"/v1/jobs/{j}").json() for j in [stat, *routine]}
            still = c.get(f"/v1/jobs/{blocker}").json()["status"]
            assert still == "running", "the blocker finished before the queue was read; use a larger scan"

            waits = {j: v["waiting"] for j, v in views.items()}
            assert [waits[j]["position"] for j in [stat, *routine]] == [1, 2, 3, 4]
            assert [waits[j]["ahead"] for j in [stat, *routine]] == [0, 1, 2, 3]
            for j in [stat, *routine]:
                basis = waits[j]["basis"]
                assert basis["run_time_s"] == OLD_RUN_S and basis["runs"] == 1 and basis["slots"] == 1
                assert basis["method"].startswith("start = ")
                start, finish = _at(waits[j]["estimated_start"]), _at(waits[j]["estimated_finish"])
                assert finish - start == timedelta(seconds=OLD_RUN_S)
            stat_start = _at(waits[stat]["estimated_start"])
            assert stat_start >= _at(views[stat]["created_at"])  # behind what is left of the blocker
            for k, j in enumerate(routine, start=1):  # each one run time later (1 s: reads are not at once)
                gap = (_at(waits[j]["estimated_start"]) - stat_start).total_seconds()
                assert abs(gap - k * OLD_RUN_S) <= 1.0, (k, gap)

            assert _started(c, [stat, *routine]) == [stat, *routine]
            assert c.get(f"/v1/jobs/{stat}").json()["waiting"] is None
            assert wait_job(c, blocker)["status"] == "succeeded"

            # Recovery: the broker loses its queue while no worker runs; the next worker's start-up pass
            # publishes the queued jobs again, each with its priority. The worker takes whichever message
            # arrives first; the stat job must run right after at the latest.
            stack.workers[0].stop()
            queued = [_submit(c, crop) for _ in range(3)]
            late_stat = _submit(c, crop, "stat")
            client = redis.Redis.from_url(url)
            prefix = stack.env["SEGSERVE_BROKER_KEY_PREFIX"]
            lost = [key for key in client.scan_iter(f"{prefix}*") if b"unacked" not in key]
            assert lost, "the queued messages should be in the broker"
            client.delete(*lost)
            client.close()
            stack.start_worker()
            order = _started(c, [*queued, late_stat])
            assert order.index(late_stat) <= 1, order
    finally:
        stack.stop()
