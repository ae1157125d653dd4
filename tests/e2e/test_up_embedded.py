"""`segserve up` with no Redis and no PostgreSQL configured: embedded broker, SQLite, one job worker and
one interactive worker. A job goes through, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.paths import REPO, WEIGHTS, require_shared
from tests.support.stack import free_port, run_job, wait_for, wait_job
from tests.support.volumes import SUBJECT_A, brain_crop

pytestmark = pytest.mark.e2e


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if _ppid(stat) == pid]


def _ppid(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return -1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_runs_a_job_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    require_shared()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")}
    env.update(
        {
            "SEGSERVE_DATA_DIR": str(tmp_path / "data"),
            "SEGSERVE_PORT": str(port),
            "SEGSERVE_MODELS_DIR": str(WEIGHTS),
            "SEGSERVE_LEASE_S": "8",
            "SEGSERVE_RECOVERY_INTERVAL_S": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "shell.cli", "up"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        key = wait_for(
            lambda: re.search(r"ssk_\S+", (tmp_path / "up.log").read_text()), 60, "the first admin key"
        ).group(0)
        headers = {"Authorization": f"Bearer {key}"}
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 120, "readiness")
        ready = httpx.get(f"{base}/readyz").json()
        # the job worker and the interactive worker (interaction sessions' clicks, a queue of their own)
        assert ready["checks"]["workers"]["count"] == 2
        names = ready["checks"]["workers"]["names"]
        assert any(n.startswith("cpu-") for n in names) and any(n.startswith("interactive-") for n in names)

        image, reference = brain_crop(tmp_path, size=40)
        with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
            done = run_job(c, "brain-mri-structures", image, reference, timeout=180)
            assert c.get(f"/v1/jobs/{done['id']}/metrics").json()["mean"]["dice"] is not None

            # SIGKILL the worker in the middle of a job: `up` starts a new one, which takes the job over.
            resp = c.post(
                "/v1/jobs",
                data={"model": "brain-mri-structures"},
                files={"image": (SUBJECT_A / "norm.mgz").open("rb")},
            )
            job_id = resp.json()["id"]
            wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.05, 120, "the forward pass")
            worker = next(pid for pid in _children(up.pid) if "shell.cli worker --queue cpu" in _cmdline(pid))
            os.kill(worker, signal.SIGKILL)
            done = wait_job(c, job_id, timeout=300)
            assert done["status"] == "succeeded" and done["attempts"] == 2, done

        started = _descendants(up.pid)
        assert len(started) >= 6  # broker, api, both workers and their pool children
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        time.sleep(0.5)
        left = [pid for pid in started if _alive(pid)]
        assert left == [], f"processes left behind: {left}"
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
        print((tmp_path / "up.log").read_text()[-5000:])
    # a second start reuses the data dir and prints no new admin key
    second = subprocess.Popen(
        [sys.executable, "-m", "shell.cli", "up"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 60, "second start")
    finally:
        second.send_signal(signal.SIGINT)
        out = second.communicate(timeout=60)[0].decode()
    assert "ssk_" not in out
    assert second.returncode == 0
