"""A 2-channel nnU-Net v2 model folder, made here with nnU-Net's own tools, is installed with
`segserve models install --folds 0` into the running service and used for a job (one form part per channel):
the labels come back on the input grid, equal to nnU-Net's own prediction of the same case in this process."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.predictor import load_predictor
from segserve.scans.readers import read_channels
from tests.support.nnunet import images_dir, model_folder, nnunet_models
from tests.support.stack import Stack, wait_job

pytestmark = pytest.mark.e2e
MODEL = "Dataset992_TinyCT2ch-3d_fullres"


def test_installed_nnunet_model_runs_a_job(
    stack: Stack, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = nnunet_models(tmp_path_factory)
    installed = stack.cli("models", "install", str(model_folder(root, "multi")), "--folds", "0")
    assert f"nnunet/{MODEL}/fold_0/checkpoint_final.pth" in installed.stdout
    assert "fold_1" not in installed.stdout
    ct, smoothed = (images_dir(root, "multi") / f"spleen_000{i}.nii.gz" for i in (0, 1))
    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == MODEL)
        assert card["available"] is True, card
        assert card["input"]["channels"] == ["ct", "smoothed"]
        assert card["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
        resp = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files=[
                ("image.smoothed", ("smoothed.nii.gz", smoothed.read_bytes())),
                ("image.ct", ("ct.nii.gz", ct.read_bytes())),
            ],
        )
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"], timeout=300)
        assert done["status"] == "succeeded", done
        out = tmp_path / "labels.nii.gz"
        out.write_bytes(c.get(f"/v1/jobs/{done['id']}/result").content)
        # a job with one scan only is refused: the model takes two channels
        refused = c.post("/v1/jobs", data={"model": MODEL}, files={"image": ct.open("rb")})
        assert refused.status_code == 422, refused.text
    source, result = nib.load(ct), nib.load(out)
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-5)
    models_dir = Path(stack.env["SEGSERVE_MODELS_DIR"])
    from models.catalog import Catalog

    predictor = load_predictor(Catalog(models_dir).card(MODEL), models_dir)
    expected = predictor.predict(read_channels([("ct", [ct]), ("smoothed", [smoothed])]))
    labels = np.asarray(result.dataobj)
    assert np.array_equal(labels, expected) and len(np.unique(labels)) >= 2
