"""Databases for the tests of segserve's database code, against SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from segserve.db import init_db
from tests.conftest import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own: a SQLite file in tmp_path, or a fresh PostgreSQL database
    (dropped afterwards), so that rows other tests left never count."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        with fresh_postgres_database("segserve_unit") as url:
            yield url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """`empty_db_url` with the current schema (init_db)."""
    init_db(empty_db_url)
    return empty_db_url
