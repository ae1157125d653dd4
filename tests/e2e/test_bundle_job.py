"""A MONAI bundle in the Model Zoo layout, built here, is installed with `segserve models install` into the
running service's models directory and used for a job, with no code change and no restart."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.testing.make_bundle import write_unet_bundle
from tests.support.paths import DATA
from tests.support.stack import Stack, run_job

pytestmark = pytest.mark.e2e
SPLEEN = DATA / "ct" / "spleen"


def test_installed_bundle_runs_a_job(stack: Stack, tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "spleen_ct_test_bundle", labels={0: "background", 1: "spleen"})
    installed = stack.cli("models", "install", str(bundle))
    assert "installed" in installed.stdout
    with stack.client() as c:
        items = c.get("/v1/models").json()["items"]
        card = next(m for m in items if m["id"] == "spleen_ct_test_bundle")
        assert card["available"] is True and card["labels"] == {"0": "background", "1": "spleen"}
        done = run_job(
            c, card["id"], SPLEEN / "sub-spleen2_ct.nii.gz", SPLEEN / "sub-spleen2_ct_seg-manual.nii.gz"
        )
        out = tmp_path / "labels.nii.gz"
        out.write_bytes(c.get(f"/v1/jobs/{done['id']}/result").content)
        metrics = c.get(f"/v1/jobs/{done['id']}/metrics").json()
    source = nib.load(SPLEEN / "sub-spleen2_ct.nii.gz")
    result = nib.load(out)
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 1}
    assert [r["label"] for r in metrics["structures"]] == [1]

    # a changed weight file marks the model unavailable, and new jobs for it are refused with 422
    weights = Path(stack.env["SEGSERVE_MODELS_DIR"]) / "bundles" / card["id"] / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == card["id"])
        assert card["available"] is False and "model.pt" in card["unavailable_reason"]
        refused = c.post(
            "/v1/jobs",
            data={"model": card["id"]},
            files={"image": (SPLEEN / "sub-spleen2_ct.nii.gz").open("rb")},
        )
    assert refused.status_code == 422 and "unavailable" in refused.json()["detail"]
