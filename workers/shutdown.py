"""Handing running jobs back when a worker is told to stop (SIGTERM, as Kubernetes and `segserve up` do).

Celery's warm shutdown stops taking messages and then waits for the running tasks to finish, which for a
segmentation may be many minutes. Instead, the worker's main process (on Celery's `worker_shutting_down`
signal) sends HANDBACK_SIGNAL to its pool processes: each one running a task, and the idle ones too (a
message handed to the pool just before the shutdown may start there a moment later; no further one comes).
A pool process only sets a flag; the
job's `is_cancelled` check sees it at the model's next step, the runner puts the job back to queued in the
database (`segserve.jobs.release`), and the task rejects its message with requeue, so the broker holds it
again, with its priority, for any other worker. The pool then idles and the warm shutdown ends at once.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import suppress
from types import FrameType
from typing import Any

# SIGUSR1 is billiard's soft time limit in pool processes; SIGUSR2 is free there.
HANDBACK_SIGNAL = signal.SIGUSR2
_stopping = threading.Event()
_pool: Any = None  # the worker's task pool (main process), from `watch_pool`


def stopping() -> bool:
    """True once this process was asked to hand its job back."""
    return _stopping.is_set()


def _on_handback_signal(_signum: int, _frame: FrameType | None) -> None:
    _stopping.set()  # only a flag: the job's own thread does the work at its next check


def install_pool_process_handler() -> None:
    """In each pool process (worker_process_init): turn HANDBACK_SIGNAL into the stopping flag."""
    signal.signal(HANDBACK_SIGNAL, _on_handback_signal)


def watch_pool(pool: Any) -> None:
    """In the worker's main process (worker_ready): remember the task pool whose processes to signal."""
    global _pool
    _pool = pool


def _pool_pids() -> set[int]:
    try:  # a prefork pool lists its processes in `info`; other pools have none of their own
        return {int(pid) for pid in _pool.info.get("processes", [])} if _pool is not None else set()
    except Exception:
        return set()


def signal_pool() -> int:
    """In the worker's main process, when shutdown begins: ask every pool process (and so every running
    job) to hand its job back. Runs inside a signal handler, so it only sends signals (no logging, no
    locks). Returns how many processes were asked."""
    from celery.worker import state

    pids = {request.worker_pid for request in list(state.active_requests) if request.worker_pid}
    pids |= _pool_pids()
    for pid in pids:
        if pid == os.getpid():  # a pool that runs tasks in the main process (solo)
            _stopping.set()
            continue
        with suppress(ProcessLookupError):
            os.kill(pid, HANDBACK_SIGNAL)
    return len(pids)
