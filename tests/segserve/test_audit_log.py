"""The audit table is append-only in the database itself (SQLite and PostgreSQL triggers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from segserve.audit import AuditEvent, query, record
from segserve.db import init_db, new_session


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (
        f"sqlite:///{tmp_path / 'a.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    init_db(url)
    yield url


def test_events_are_recorded_and_cannot_be_changed(db_url: str) -> None:
    with new_session(db_url) as s:
        record(
            s,
            key_id="k1",
            action="GET /v1/jobs/{job_id}/result",
            resource_type="job",
            resource_id="j1",
            client_address="10.0.0.1",
            status_code=200,
        )
        record(
            s,
            key_id="k2",
            action="DELETE /v1/jobs/{job_id}",
            resource_type="job",
            resource_id="j1",
            client_address="10.0.0.2",
            status_code=204,
        )
        events = query(s, resource_id="j1")
        assert [e.key_id for e in events] == ["k2", "k1"]  # newest first
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            s.execute(sa.update(AuditEvent).values(key_id="someone else"))
        s.rollback()
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            s.execute(sa.delete(AuditEvent))
        s.rollback()
        assert len(query(s, resource_id="j1")) == 2
