"""A TotalSegmentator task pulled with `segserve models pull` (from a local stand-in of its release host)
into the running service's models directory, listed in /v1/models with its sources and licence, and used for
a job: the worker's labels equal the same task run in-process (which the model tests check against
TotalSegmentator's own python_api)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.support.paths import DATA
from tests.support.stack import Stack, wait_job

pytestmark = pytest.mark.e2e
pytest.importorskip("totalsegmentator")
CT = DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz"


def test_pulled_totalsegmentator_task_runs_a_job(stack: Stack, tmp_path: Path) -> None:
    from models.catalog import Catalog
    from models.totalseg import tasks
    from models.totalseg.predictor import TotalSegPredictor
    from segserve.scans.readers import read_image
    from tests.support.totalseg_standin import serve, write_ct_crop, write_release

    card_id = "totalseg-total"
    crop = write_ct_crop(CT, tmp_path / "crop.nii.gz")
    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == card_id)
    assert card["available"] is False
    assert card["unavailable_reason"] == f"not installed: segserve models pull {card_id}"
    assert [s["url"].rsplit("/", 1)[1][:11] for s in card["sources"]] == [
        f"Dataset{n}_" for n in (291, 292, 293, 294, 295)
    ]
    assert "open weights" in card["licence"]

    write_release(tasks.task_card(card_id), tmp_path / "release")
    with serve(tmp_path / "release") as base:
        out = stack.cli("models", "pull", card_id, "--base-url", base)
    assert f"installed {card_id}" in out.stdout

    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == card_id)
        assert card["available"] is True, card
        assert len(card["labels"]) == 118 and card["labels"]["1"] == "spleen"
        resp = c.post("/v1/jobs", data={"model": card_id}, files={"image": crop.open("rb")})
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"], timeout=300)
        assert done["status"] == "succeeded", done
        result_path = tmp_path / "labels.nii.gz"
        result_path.write_bytes(c.get(f"/v1/jobs/{done['id']}/result").content)

    result = nib.load(result_path)
    source = nib.load(crop)
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-5)
    models_dir = Path(stack.env["SEGSERVE_MODELS_DIR"])
    here = Catalog(models_dir).status(card_id).card
    expected = TotalSegPredictor.load(here, models_dir).predict(read_image([crop]))
    assert np.array_equal(np.asarray(result.dataobj), expected)
