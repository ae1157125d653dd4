"""A forked child (Celery's prefork pool) must not reuse the parent's pooled database connections.

The worker's main process keeps connections for its recovery and intake threads; a pool child that took one
of them over shared a socket with the parent, and PostgreSQL answered the child with "connection in
transaction status INTRANS" while the parent was mid-transaction (a job failed that way in CI)."""

from __future__ import annotations

import os

import sqlalchemy as sa

from segserve.db import get_engine


def _backend_pid(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_forked_child_opens_its_own_postgres_connection(postgres_url: str) -> None:
    parent_pid = _backend_pid(postgres_url)  # that connection now sits idle in the parent's pool
    assert _backend_pid(postgres_url) == parent_pid  # the pool hands the same one out again
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child; its answer travels through the pipe)
        code = 1
        try:
            os.write(write, str(_backend_pid(postgres_url)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_backend = int(pipe.read() or -1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backend not in (-1, parent_pid)
    assert _backend_pid(postgres_url) == parent_pid  # the parent's connection still works, untouched
