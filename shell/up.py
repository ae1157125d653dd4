"""`segserve up`: the API, one job worker, one interactive worker (interaction sessions' clicks, on their
own queue) and (without SEGSERVE_REDIS_URL) an embedded broker, on one machine.

Ctrl-C (SIGINT) or SIGTERM stops every process it started: the API and the worker first (the API finishes
uploads in flight, the worker hands its running job back to the queue), the broker last.
Children also get SIGTERM from the kernel if this process dies without cleaning up (PR_SET_PDEATHSIG), and a
broker left by a SIGKILLed run is found by its pid file and stopped at the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from segserve.broker import EmbeddedRedis
from segserve.config import Settings
from segserve.db import Role, init_db, session_scope
from segserve.security import create_key, has_admin_key

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Run in the child before exec: ask the kernel for SIGTERM when the parent dies."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Shutdown(Exception):
    pass


def _raise_shutdown(signum: int, _frame: FrameType | None) -> None:
    raise _Shutdown(signal.Signals(signum).name)


def ensure_admin_key(settings: Settings) -> str | None:
    """Create a first admin key when there is none; returns its secret (shown once) or None."""
    init_db(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        if has_admin_key(session):
            return None
        return create_key(session, "first admin (segserve up)", Role.admin).secret


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


def _wait_or_kill(proc: subprocess.Popen[bytes], name: str, timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name, timeout_s)
        proc.kill()
        proc.wait()


class _Supervisor:
    """Starts the children and restarts one that dies (a worker killed mid-job comes back and its
    recovery pass picks the job up again). Gives up when a child keeps dying."""

    max_restarts = 5
    window_s = 60.0

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]) -> None:
        self.commands = commands
        self.env = env
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._restarts: dict[str, list[float]] = {name: [] for name in commands}

    def _spawn(self, name: str) -> None:
        self.children[name] = subprocess.Popen(
            self.commands[name], env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )

    def start_all(self) -> None:
        for name in self.commands:
            self._spawn(name)

    def check(self) -> None:
        now = time.monotonic()
        for name, proc in list(self.children.items()):
            if proc.poll() is None:
                continue
            recent = [t for t in self._restarts[name] if now - t < self.window_s]
            if len(recent) >= self.max_restarts:
                print(
                    f"{name} keeps exiting (last code {proc.returncode}); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                raise _Shutdown(name)
            print(f"{name} exited with code {proc.returncode}; restarting it", file=sys.stderr, flush=True)
            self._restarts[name] = [*recent, now]
            self._spawn(name)


def run_up(settings: Settings, *, concurrency: int, queue: str, interactive_concurrency: int = 1) -> int:
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = ensure_admin_key(settings)
    if secret:
        print(f"\nFirst admin API key (shown once, store it now):\n  {secret}\n", flush=True)

    env = dict(os.environ)
    env["SEGSERVE_DATA_DIR"] = str(data_dir)
    broker: EmbeddedRedis | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    previous = {s: signal.signal(s, _raise_shutdown) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        if not settings.redis_url:
            broker = EmbeddedRedis(data_dir / "broker")
            broker.start(preexec=_die_with_parent)
            env["SEGSERVE_REDIS_URL"] = broker.url
            print(f"embedded broker: {broker.url}", flush=True)
        commands = {
            "worker": [
                sys.executable,
                "-m",
                "shell.cli",
                "worker",
                "--queue",
                queue,
                "--concurrency",
                str(concurrency),
            ],
            # `segserve api`: the same uvicorn settings as a deployment (graceful shutdown included)
            "api": [sys.executable, "-m", "shell.cli", "api"],
        }
        if interactive_concurrency > 0:
            # Interaction sessions' clicks on their own queue and worker: never behind a long job.
            commands["interactive worker"] = [
                sys.executable,
                "-m",
                "shell.cli",
                "worker",
                "--queue",
                "interactive",
                "--concurrency",
                str(interactive_concurrency),
            ]
        supervisor = _Supervisor(commands, env)
        children = supervisor.children
        supervisor.start_all()
        print(
            f"segserve is up: http://{settings.host}:{settings.port}/docs  (Ctrl-C stops everything)",
            flush=True,
        )
        while True:
            supervisor.check()
            time.sleep(0.5)
    except _Shutdown as why:
        code = 0 if str(why) in ("SIGINT", "SIGTERM") else 1
    finally:
        # Ignore further signals while we stop children in order.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        # Both at once: the API finishes the uploads in flight (up to SEGSERVE_SHUTDOWN_GRACE_S) while the
        # worker hands its running job back to the queue (workers/shutdown.py) and exits within seconds.
        for proc in children.values():
            _signal(proc, signal.SIGTERM)
        for name in ("worker", "interactive worker"):
            if name in children:
                _wait_or_kill(children[name], name, 30)
        if "api" in children:
            _wait_or_kill(children["api"], "api", settings.shutdown_grace_s + 10)
        if broker is not None:
            broker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        print("segserve stopped", flush=True)
    return code
