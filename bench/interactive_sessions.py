"""Benchmark: one click of an interaction session over HTTP, on a 256³ brain MRI (subject-a's norm.mgz).

Run from the repository root:

    .venv/bin/python -m bench.interactive_sessions [--clicks 8]

A succeeded job is put straight into a fresh data directory (no model run; its labels are subject-a's
18-class reference, which gives the click positions: the voxel nearest each structure's centre). The API,
one interactive worker and an embedded broker run as real processes. Timed per click, from the request
to the answer (the mask written and summarised):
  baseline  the first click of a new session at a structure's centre: the worker reads the stored input
            and prepares it (what every click would cost without the cache);
  kept      the same click again in that session after an undo: the prepared image stayed in the worker.
Both are one click at the same point (the same mask), measured in the same run; the ratio kept / baseline
is printed with the medians, and the worker's own share of a kept click (segmenting, writing the mask).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np

from bench.viewer import _free_port, _seed_job
from segserve.broker import EmbeddedRedis
from segserve.storage import JobFiles

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


def _click_body(point: list[int]) -> dict[str, Any]:
    return {"type": "click", "point": point}


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
        labels = np.asarray(nib.load(JobFiles(tmp / "data" / "jobs", job).labels).dataobj)  # type: ignore[attr-defined]
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
        secret = json.loads(key)["key"]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=300) as c:
            deadline = time.monotonic() + 120
            while True:  # until the API and the interactive worker answer a first click
                try:
                    sid = c.post(f"/v1/jobs/{job}/interactions", json={}).json()["id"]
                    warm = c.post(f"/v1/jobs/{job}/interactions/{sid}/prompts", json=_click_body(points[0]))
                    if warm.status_code == 200:
                        break
                except (httpx.HTTPError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the API or the interactive worker did not come up")
                time.sleep(1)

            def click(session: str, point: list[int]) -> tuple[float, dict[str, Any]]:
                started = time.perf_counter()
                resp = c.post(f"/v1/jobs/{job}/interactions/{session}/prompts", json=_click_body(point))
                assert resp.status_code == 200, resp.text
                return time.perf_counter() - started, resp.json()

            # Per point, one new session: its first click prepares (baseline); undo; the same click again
            # finds the prepared image (kept). Both are one click at the same point: the same mask.
            kept, baseline, worker_kept, sizes, undos = [], [], [], [], []
            for point in points:
                sid = c.post(f"/v1/jobs/{job}/interactions", json={}).json()["id"]
                seconds, first = click(sid, point)
                assert first["prepared"]
                baseline.append(seconds)
                started = time.perf_counter()
                assert c.post(f"/v1/jobs/{job}/interactions/{sid}/undo").status_code == 200
                undos.append(time.perf_counter() - started)
                seconds, again = click(sid, point)
                assert not again["prepared"] and again["voxels"] == first["voxels"]
                kept.append(seconds)
                worker_kept.append(float(again["seconds"]))
                sizes.append(int(again["voxels"]))
                c.delete(f"/v1/jobs/{job}/interactions/{sid}")
        k, b = statistics.median(kept), statistics.median(baseline)
        print(f"256³ brain MRI, {len(kept)} clicks, one per structure ({min(sizes)}..{max(sizes)} voxels)")
        print(f"kept (prepared image in the worker): median {k * 1000:.0f} ms, max {max(kept) * 1000:.0f} ms")
        print(f"  in the worker (segment, write): median {statistics.median(worker_kept) * 1000:.0f} ms")
        print(f"baseline (prepared per click): median {b * 1000:.0f} ms, max {max(baseline) * 1000:.0f} ms")
        print(f"ratio kept / baseline: {k / b:.3f}")
        print(f"undo to no prompt (an empty mask written): median {statistics.median(undos) * 1000:.0f} ms")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
