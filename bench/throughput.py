"""Benchmark: throughput of `segserve up` with 2 workers on 20 brain jobs submitted at once.

Run from the repository root (about 5 minutes on 2 quiet cores):

    .venv/bin/python -m bench.throughput                          # 20 jobs, 2 workers x 1 torch thread
    .venv/bin/python -m bench.throughput --jobs 10 --workers 1 --threads 2
    .venv/bin/python -m bench.throughput --post-parallel 4   # 4 uploads in flight at a time

What runs: ``segserve up --concurrency WORKERS`` (its embedded broker, SQLite, a temporary data dir, the
weights of ../shared/models) with SEGSERVE_TORCH_THREADS=THREADS in each worker process and the worker's
default CPU path (``--precision``, SEGSERVE_CPU_PRECISION). Once /readyz answers, JOBS copies of subject-a
(``norm.mgz``, model brain-mri-structures) are POSTed at once (``--post-parallel`` in flight, default all of
them); the time is from the first POST to the last job succeeded, the workers starting cold (each loads the
model at its first job).

Baseline, measured in the same run by this process with WORKERS x THREADS torch threads (the whole
machine): the bare MeshNet forward of ``bench.inference`` on the same input, fp32 (a) and the fast bf16
twin (f) where the CPU has native bf16; the best of one run before the stack starts and one after it
stops (one untimed warm-up each). The report: jobs per minute, and the ratio of JOBS x the bare forward
(what a perfect server would need: forwards back to back, nothing else) to the measured time.

Also checked, from the job_stages table (seconds per stage of each job, in the workers): how many jobs
loaded a model (at most one per worker process: a worker keeps its models), and the read stage (each input
is decoded once, by the API, which refuses a bad upload at POST and keeps what it decoded; the worker maps
that copy, segserve.scans.decoded, so its read stage is milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from bench.inference import MODEL, SCAN, bare_forward
from models.cpu import cpu_flags, select_cpu_path
from tests.support.paths import DATA, WEIGHTS
from tests.support.stack import Proc, free_port, run_cli, segserve, wait_for

# A job whose load stage took longer than this surely loaded the model (a cached one takes microseconds).
LOADED_S = 0.05


def _submit(base_url: str, key: str) -> str:
    with SCAN.open("rb") as fh, httpx.Client(base_url=base_url, timeout=300) as client:
        response = client.post(
            "/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            data={"model": MODEL},
            files={"image": ("norm.mgz", fh)},
        )
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


def run_jobs(args: argparse.Namespace, tmp: Path) -> tuple[float, list[str], Path]:
    """Start `segserve up`, submit the jobs at once, wait for them; (seconds, job ids, database path)."""
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True)
    created = run_cli(
        "keys", "create", "--name", "bench", "--role", "admin", models_dir=WEIGHTS, data_dir=data_dir
    )
    if created.returncode != 0:
        raise RuntimeError(f"segserve keys create failed: {created.stderr[-2000:]}")
    key = json.loads(created.stdout)["key"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")}
    env.update(
        {
            "SEGSERVE_DATA_DIR": str(data_dir),
            "SEGSERVE_MODELS_DIR": str(WEIGHTS),
            "SEGSERVE_PORT": str(port),
            "SEGSERVE_TORCH_THREADS": str(args.threads),
            "SEGSERVE_CPU_PRECISION": args.precision,
            "SEGSERVE_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    up = Proc("up", segserve("up", "--concurrency", str(args.workers)), env, tmp)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200, 180, "/readyz")
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.post_parallel) as pool:
            ids = list(pool.map(lambda _: _submit(base_url, key), range(args.jobs)))
        posted = time.perf_counter() - start
        print(f"  {args.jobs} jobs POSTed in {posted:.1f} s", flush=True)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            pending = set(ids)
            while pending:
                for job_id in list(pending):
                    body = client.get(f"/v1/jobs/{job_id}").json()
                    if body["status"] in ("failed", "cancelled"):
                        raise RuntimeError(f"job {job_id} ended {body['status']}: {body.get('error')}")
                    if body["status"] == "succeeded":
                        pending.discard(job_id)
                time.sleep(0.2)
        seconds = time.perf_counter() - start
    except BaseException:
        print(up.log_tail(), file=sys.stderr)
        raise
    finally:
        up.stop(timeout=60)
    return seconds, ids, data_dir / "segserve.db"


def stage_seconds(database: Path, ids: list[str]) -> dict[str, list[float]]:
    """Per stage, the seconds of each of the given jobs' runs (from the job_stages table)."""
    stages: dict[str, list[float]] = {}
    with sqlite3.connect(database) as db:
        for job_id, stage, seconds in db.execute("SELECT job_id, stage, seconds FROM job_stages"):
            if job_id in ids:
                stages.setdefault(stage, []).append(float(seconds))
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (segserve up --concurrency)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each worker process")
    parser.add_argument(
        "--post-parallel",
        type=int,
        default=20,
        help="POSTs in flight at once (before 2026-11-28 20 at once exhausted the API's database "
        "connection pool, a 500; the pool now covers the API's request threads)",
    )
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32"], help="SEGSERVE_CPU_PRECISION"
    )
    args = parser.parse_args(argv)
    if not SCAN.is_file() or not (WEIGHTS / "brainchop").is_dir():
        print(f"subject-a or the weights are missing under {DATA.parent} (set SEGSERVE_SHARED_DIR)")
        return 2
    torch.set_num_threads(args.workers * args.threads)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cpu = select_cpu_path(args.precision, cpu_flags())
    bare = {"(a) fp32": bare_forward()[0]}
    if cpu.precision == "bf16":
        bare["(f) bf16 twin"] = bare_forward(bf16=cpu)[0]
    times: dict[str, list[float]] = {name: [] for name in bare}
    for name, run in bare.items():
        run()  # warm-up
        times[name].append(run())
    tmp = Path(tempfile.mkdtemp(prefix="segserve-throughput-"))
    try:
        seconds, ids, database = run_jobs(args, tmp)
        stages = stage_seconds(database, ids)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, run in bare.items():
        times[name].append(run())
    per_minute = args.jobs * 60 / seconds
    print(
        f"{args.jobs} x {MODEL} on subject-a, segserve up with {args.workers} workers x {args.threads} "
        f"torch threads, SEGSERVE_CPU_PRECISION={args.precision}"
    )
    print(f"  all done in {seconds:.1f} s: {per_minute:.2f} jobs per minute")
    for name, runs in times.items():
        best = min(runs)
        ideal = args.jobs * best
        print(
            f"  bare forward {name}: {best:.2f} s (runs {[round(t, 2) for t in runs]}); {args.jobs} x = "
            f"{ideal:.1f} s; ratio {args.jobs} x bare / measured = {ideal / seconds:.3f}"
        )
    loads = stages.get("load", [])
    slow = sum(1 for s in loads if s > LOADED_S)
    print(
        f"  load stage: {sum(loads):.2f} s over {len(loads)} jobs; {slow} over {LOADED_S * 1000:.0f} ms "
        f"(a cached model costs microseconds; a first load of MeshNet's 0.8 MB of weights can be quicker "
        f"than {LOADED_S * 1000:.0f} ms, so this counts at most the {args.workers} first loads)"
    )
    for stage in ("read", "load", "predict", "write"):
        values = stages.get(stage, [])
        if values:
            print(
                f"  worker stage {stage:<8} mean {sum(values) / len(values):6.2f} s, max {max(values):6.2f} s"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
