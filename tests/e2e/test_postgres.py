"""The same path with PostgreSQL as the job database (the multi-machine deployment's setting)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import pytest
import sqlalchemy as sa

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, run_job, running_stack
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Stack]:
    require_shared()
    env = {
        "SEGSERVE_REDIS_URL": redis_db(14),
        "SEGSERVE_DATABASE_URL": postgres_url,
        "SEGSERVE_MODELS_DIR": str(WEIGHTS),
    }
    with running_stack(tmp_path_factory.mktemp("pg"), env) as running:
        yield running


def test_job_flow_on_postgres(pg_stack: Stack, postgres_url: str, tmp_path: Path) -> None:
    image, reference = brain_crop(tmp_path, size=40)
    with pg_stack.client() as c:
        done = run_job(c, "brain-mri-structures", image, reference)
        out = tmp_path / "r.nii.gz"
        out.write_bytes(c.get(f"/v1/jobs/{done['id']}/result").content)
        assert nib.load(out).shape == (40, 40, 40)
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM jobs WHERE id = :i"), {"i": done["id"]}
        ).scalar_one()
    engine.dispose()
    assert status == "succeeded"
