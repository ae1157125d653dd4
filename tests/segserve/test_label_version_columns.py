"""A database made before interaction sessions: label_versions gains label_names and provenance (null for
the old rows, which keep working) and interaction_sessions is created, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Column, MetaData, Table, insert, inspect

from segserve.db import Base, LabelVersion, get_engine, init_db, new_session, utcnow
from segserve.interactions import InteractionSession

LATER = ("label_names", "provenance")


def _old_database(url: str) -> None:
    old = MetaData()
    columns: list[Column[object]] = [c._copy() for c in LabelVersion.__table__.columns if c.name not in LATER]
    table = Table("label_versions", old, *columns)
    engine = get_engine(url)
    old.create_all(engine)
    skipped = ("label_versions", "interaction_sessions")
    Base.metadata.create_all(engine, tables=[t for t in Base.metadata.sorted_tables if t.name not in skipped])
    with engine.begin() as conn:
        conn.execute(
            insert(table).values(
                id="v1",
                job_id="j1",
                version=1,
                key_id="k",
                comment="",
                label_values=[1, 2],
                created_at=utcnow(),
            )
        )


def test_old_label_versions_gain_the_columns(empty_db_url: str) -> None:
    _old_database(empty_db_url)
    assert "interaction_sessions" not in inspect(get_engine(empty_db_url)).get_table_names()
    init_db(empty_db_url)
    init_db(empty_db_url)  # a second start changes nothing
    engine = get_engine(empty_db_url)
    assert set(LATER) <= {c["name"] for c in inspect(engine).get_columns("label_versions")}
    with new_session(empty_db_url) as session:
        old = session.get(LabelVersion, "v1")
        assert old is not None and old.label_names is None and old.provenance is None
        session.add(
            LabelVersion(
                id="v2",
                job_id="j1",
                version=2,
                key_id="k",
                label_values=[1, 2, 40],
                label_names={"40": "lesion"},
                provenance={"engine": "classical", "prompts": [{"type": "click", "point": [1, 2, 3]}]},
            )
        )
        session.add(
            InteractionSession(
                id="s1",
                job_id="j1",
                key_id="k",
                engine="classical",
                prompts=[],
                expires_at=utcnow() + timedelta(seconds=60),
            )
        )
        session.commit()
    with new_session(empty_db_url) as session:
        new = session.get(LabelVersion, "v2")
        assert new is not None and new.label_names == {"40": "lesion"}
        assert new.provenance is not None and new.provenance["prompts"][0]["point"] == [1, 2, 3]
        row = session.get(InteractionSession, "s1")
        assert row is not None and row.status == "open" and row.prompts == []
