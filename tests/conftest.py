"""Shared fixtures: real Redis, real PostgreSQL, and the real-process service stack."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, running_stack

REDIS_URL = os.environ.get("SEGSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get(
    "SEGSERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def redis_db(index: int) -> str:
    """The URL of one Redis database index. Each stack gets its own index so that one stack's worker never
    takes another stack's jobs, and every key carries this test session's prefix (SEGSERVE_BROKER_KEY_PREFIX,
    set below) so that test runs sharing the Redis do not see each other either."""
    url = f"{REDIS_URL.rstrip('/')}/{index}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"no Redis answers at {REDIS_URL} ({exc}); .ci/run starts one")
    client.close()
    return url


# One prefix per test session, inherited by every process the tests start (Stack copies os.environ).
os.environ["SEGSERVE_BROKER_KEY_PREFIX"] = f"segserve-test-{uuid.uuid4().hex[:8]}:"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: the Zoo conformance (heaviest first), then the end-to-end tests, then the rest, each
    group in collection order. `make test` runs the suite in two processes that take whole files
    (pytest-xdist, --dist loadfile); with the long files handed out first, the short ones fill the end
    evenly instead of one process finishing a long file alone."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("zoo_heavy"):
            return 0
        if item.get_closest_marker("zoo"):
            return 1
        return 2 if item.get_closest_marker("e2e") else 3

    items.sort(key=rank)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (started by .ci/run when none answers), database 11, emptied."""
    return redis_db(11)


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database named `<prefix>_<random>` at POSTGRES_URL, dropped afterwards. Fails under CI
    and skips elsewhere when no server answers."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        message = f"no PostgreSQL answers at {POSTGRES_URL} (set SEGSERVE_TEST_POSTGRES_URL): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from segserve.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with fresh_postgres_database("segserve_test") as url:
        yield url


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    """API (uvicorn) + one Celery job worker and one interactive worker over real Redis, SQLite job
    database, and a models directory of its own into which the shared weights are installed with
    `segserve models install`."""
    require_shared()
    tmp: Path = tmp_path_factory.mktemp("stack")
    models_dir = tmp / "models"
    subprocess.run(
        [sys.executable, "-m", "shell.cli", "models", "install", str(WEIGHTS)],
        env={**os.environ, "SEGSERVE_MODELS_DIR": str(models_dir), "SEGSERVE_DATA_DIR": str(tmp / "data")},
        check=True,
        capture_output=True,
    )
    env = {
        "SEGSERVE_REDIS_URL": redis_url,
        "SEGSERVE_MODELS_DIR": str(models_dir),
        "SEGSERVE_MAX_UPLOAD_BYTES": str(50 * 1024 * 1024),
        # Every job the suite sends fits (MeshNet's 256^3 working set is most of it); a 512x512x360 scan
        # for MeshNet does not (tests/e2e/test_api_errors.py).
        "SEGSERVE_WORKER_MEMORY_MB": "4864",
    }
    with running_stack(tmp, env) as running:
        running.start_interactive_worker()  # as `segserve up` does
        yield running
