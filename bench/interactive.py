"""Benchmark: one click of an interaction session over HTTP, on a 256³ brain MRI (subject-a's norm.mgz).

Run from the repository root:

    .venv/bin/python -m bench.interactive [--clicks 8]

A succeeded job is put straight into a fresh data directory (no model run; its labels are subject-a's
18-class reference, which gives the click positions: the voxel nearest each structure's centre). The API,
one interactive worker and an embedded broker run as real processes. Timed per click, from the request
to the answer (the mask written and summarised):
  kept      clicks 2..N of one session: the prepared image stays in the worker between clicks;
  baseline  the same clicks, each the first click of a new session: the worker reads the stored input and
            prepares it again every time (what the cache saves), measured in the same run.
The ratio kept / baseline is printed with the medians. Undo is timed too (a click's cost, kept).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.viewer import _free_port, _seed_job
from segserve.broker import EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]


def _click_points(labels: np.ndarray, n: int) -> list[list[int]]:
    """The voxel of each of the `n` largest structures nearest the mean of its voxels."""
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    points = []
    for value in np.argsort(counts)[::-1][:n]:
        voxels = np.argwhere(labels == value)
        centre = voxels.mean(axis=0)
        points.append(voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))].tolist())
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-interactive-"))
    broker = EmbeddedRedis(tmp / "broker")
    broker.start()
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")},
        "SEGSERVE_DATA_DIR": str(tmp / "data"),
        "SEGSERVE_REDIS_URL": broker.url,
        "SEGSERVE_PORT": str(port),
        "SEGSERVE_LOG_LEVEL": "WARNING",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        job = _seed_job(tmp / "data", env)
        import nibabel as nib

        from segserve.storage import JobFiles

        labels = np.asarray(nib.load(JobFiles(tmp / "data" / "jobs", job).labels).dataobj)
        points = _click_points(labels, args.clicks)
        for command in (["api"], ["worker", "--queue", "interactive"]):
            procs.append(subprocess.Popen([sys.executable, "-m", "shell.cli", *command], env=env, cwd=REPO))
        key = subprocess.run(
            [sys.executable, "-m", "shell.cli", "keys", "create", "--name", "bench", "--role", "reviewer"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        secret = key.split('"key": "')[1].split('"')[0]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=300) as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    sid = c.post(f"/v1/jobs/{job}/interactions", json={}).json()["id"]
                    if (
                        c.post(
                            f"/v1/jobs/{job}/interactions/{sid}/prompts",
                            json={"type": "click", "point": points[0]},
                        ).status_code
                        == 200
                    ):
                        break
                except (httpx.HTTPError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the API or the interactive worker did not come up")
                time.sleep(1)

            def click(session: str, point: list[int]) -> tuple[float, dict[str, object]]:
                started = time.perf_counter()
                resp = c.post(
                    f"/v1/jobs/{job}/interactions/{session}/prompts", json={"type": "click", "point": point}
                )
                assert resp.status_code == 200, resp.text
                return time.perf_counter() - started, resp.json()

            kept, baseline, sizes = [], [], []
            for point in points[1:]:
                seconds, body = click(sid, point)
                assert not body["prepared"]
                kept.append(seconds)
                sizes.append(int(body["voxels"]))  # type: ignore[call-overload]
                fresh = c.post(f"/v1/jobs/{job}/interactions", json={}).json()["id"]
                seconds, body = click(fresh, point)
                assert body["prepared"]
                baseline.append(seconds)
                c.delete(f"/v1/jobs/{job}/interactions/{fresh}")
            started = time.perf_counter()
            assert c.post(f"/v1/jobs/{job}/interactions/{sid}/undo").status_code == 200
            undo = time.perf_counter() - started
        k, b = statistics.median(kept), statistics.median(baseline)
        print(f"256³ brain MRI, {len(kept)} clicks (mask sizes {min(sizes)}..{max(sizes)} voxels)")
        print(f"kept (prepared image in the worker): median {k * 1000:.0f} ms, max {max(kept) * 1000:.0f} ms")
        print(f"baseline (prepared per click): median {b * 1000:.0f} ms, max {max(baseline) * 1000:.0f} ms")
        print(f"ratio kept / baseline: {k / b:.3f}")
        print(f"undo (kept): {undo * 1000:.0f} ms")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
