"""Real processes for end-to-end tests: uvicorn, Celery workers, the embedded `segserve up`.

Every process runs from this checkout's Python with its own environment, logs to a file under the test's
tmp dir, and is stopped (or killed) by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from tests.support.paths import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
        self._log.close()

    def kill_group(self) -> None:
        """SIGKILL the process and everything in its session (a worker's pool children included)."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc!r})")


def segserve(*args: str) -> list[str]:
    return [sys.executable, "-m", "shell.cli", *args]


def run_cli(
    *args: str, models_dir: Path, data_dir: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`segserve ARGS` in a fresh process with this models and data directory (SQLite there) and no other
    SEGSERVE_ setting of the calling environment; output captured as text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")}
    env.update({"SEGSERVE_MODELS_DIR": str(models_dir), "SEGSERVE_DATA_DIR": str(data_dir)})
    return subprocess.run(segserve(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


class Stack:
    """API + worker(s) over a given broker and database."""

    def __init__(self, tmp: Path, env_overrides: dict[str, str]) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        keep = ("SEGSERVE_BROKER_KEY_PREFIX",)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_") or k in keep}
        self.env.update(
            {
                "SEGSERVE_DATA_DIR": str(tmp / "data"),
                "SEGSERVE_DATASETS_DIR": str(tmp / "datasets"),
                "SEGSERVE_PORT": str(self.port),
                "SEGSERVE_LEASE_S": "8",
                "SEGSERVE_RECOVERY_INTERVAL_S": "2",
                "SEGSERVE_TASK_SOFT_TIME_LIMIT_S": "500",
                "SEGSERVE_TASK_TIME_LIMIT_S": "540",
                "SEGSERVE_VISIBILITY_TIMEOUT_S": "600",
                "SEGSERVE_TORCH_THREADS": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env_overrides)
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.admin_key = ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            segserve(*args), env=self.env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"segserve {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out

    @property
    def datasets(self) -> Path:
        return self.tmp / "datasets"

    def start_api(self) -> None:
        self.api = Proc("api", segserve("api"), self.env, self.tmp)
        wait_for(lambda: httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200, 60, "the API")

    def start_worker(self) -> Proc:
        worker = Proc(f"worker{len(self.workers)}", segserve("worker"), self.env, self.tmp)
        self.workers.append(worker)
        return worker

    def start_interactive_worker(self, timeout: float = 90) -> Proc:
        """A worker of the `interactive` queue (interaction sessions' clicks), as `segserve up` starts one;
        returns once the API sees it alive."""
        before = len(self._worker_names())
        worker = Proc("interactive", segserve("worker", "--queue", "interactive"), self.env, self.tmp)
        self.workers.append(worker)
        wait_for(lambda: len(self._worker_names()) > before, timeout, "the interactive worker", interval=0.5)
        return worker

    def _worker_names(self) -> list[str]:
        checks = httpx.get(f"{self.base_url}/readyz", timeout=5).json()["checks"]
        return list(checks["workers"].get("names", []))

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            return httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200

        try:
            wait_for(ready, timeout, "readiness (database, broker, worker)", interval=0.5)
        except TimeoutError:
            raise TimeoutError(self.diagnostics()) from None

    def start(self) -> Stack:
        (self.tmp / "data").mkdir(parents=True, exist_ok=True)
        (self.tmp / "datasets").mkdir(parents=True, exist_ok=True)
        created = self.cli("keys", "create", "--name", "test admin", "--role", "admin").stdout
        self.admin_key = json.loads(created)["key"]
        self.start_api()
        self.start_worker()
        self.wait_ready()
        return self

    def client(self, key: str | None = None, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def diagnostics(self) -> str:
        parts = []
        for proc in [p for p in [self.api, *self.workers] if p is not None]:
            parts.append(f"--- {proc.name} (alive={proc.alive()}) ---\n{proc.log_tail()}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in self.workers:
            proc.stop(signal.SIGQUIT, timeout=20)
        if self.api is not None:
            self.api.stop()


@contextmanager
def running_stack(tmp: Path, env: dict[str, str]) -> Iterator[Stack]:
    stack = Stack(tmp, env)
    try:
        yield stack.start()
    finally:
        stack.stop()


def wait_job(
    client: httpx.Client, job_id: str, timeout: float = 300, until: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Poll a job until it is finished (or in one of `until`)."""
    final = {"succeeded", "failed", "cancelled", *until}

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in final else None

    return dict(wait_for(done, timeout, f"job {job_id}", interval=0.5))


def run_job(
    client: httpx.Client, model: str, image: Path, reference: Path | None = None, timeout: float = 300
) -> dict[str, Any]:
    """POST a job (``image`` and, if given, ``reference`` as uploads), check it was accepted (202), wait
    for it and check it succeeded; returns the finished job's JSON."""
    with image.open("rb") as image_file, (reference or image).open("rb") as reference_file:
        files = {"image": image_file, **({"reference": reference_file} if reference else {})}
        resp = client.post("/v1/jobs", data={"model": model}, files=files)
    assert resp.status_code == 202, resp.text
    done = wait_job(client, resp.json()["id"], timeout=timeout)
    assert done["status"] == "succeeded", (done.get("error"), done)
    return done
