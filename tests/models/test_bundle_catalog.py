"""MONAI bundles in the catalog: install, listing with labels, hash manifest, dispatch and caching."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle.config import BundleError
from models.catalog import Catalog, card_to_public
from models.install import install_models
from models.testing.make_bundle import write_unet_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = {0: "background", 1: "liver", 2: "spleen"}


@pytest.fixture()
def installed(tmp_path: Path) -> Path:
    source = write_unet_bundle(tmp_path / "src" / "abdomen_unet", labels=LABELS, version="1.2.0")
    models_dir = tmp_path / "models"
    paths = install_models(source, models_dir)
    assert "bundles/abdomen_unet/models/model.pt" in paths
    assert "bundles/abdomen_unet/configs/inference.json" in paths
    return models_dir


def test_installed_bundle_is_listed_with_labels(installed: Path) -> None:
    catalog = Catalog(installed)
    assert "abdomen_unet" in catalog.ids() and "brain-mri-structures" in catalog.ids()
    status = catalog.status("abdomen_unet")
    assert status.available, status.reason
    card = status.card
    assert card.labels == LABELS and card.version == "1.2.0" and card.architecture == "UNet"
    assert card.modality == "CT" and card.num_classes == 3
    assert card.colors[0] == (0, 0, 0) and len(set(card.colors.values())) == 3
    assert card.input["orientation"] == "RAS"  # spacing is "@pixdim", a reference: not shown
    files = {f.path: f for f in card.files}
    assert set(files) == {
        "bundles/abdomen_unet/configs/metadata.json",
        "bundles/abdomen_unet/configs/inference.json",
        "bundles/abdomen_unet/models/model.pt",
    }
    assert all(len(f.sha256) == 64 and f.size_bytes > 0 for f in files.values())
    public = card_to_public(status)
    text = json.dumps(public)
    assert str(installed) not in text and public["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert install_models(installed / "bundles" / "abdomen_unet", installed) == []  # same content


def test_changed_file_makes_bundle_unavailable(installed: Path) -> None:
    from models.bundle.predictor import BundlePredictor
    from models.card import ModelUnavailable

    catalog = Catalog(installed)
    assert catalog.status("abdomen_unet").available
    weights = installed / "bundles" / "abdomen_unet" / "models" / "model.pt"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    status = catalog.status("abdomen_unet")
    assert not status.available and status.reason is not None
    assert "models/model.pt" in status.reason and "sha256" in status.reason
    with pytest.raises(ModelUnavailable, match="sha256"):
        BundlePredictor.load(status.card, installed)


def test_bundle_copied_without_install_is_unavailable(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_unet_bundle(models_dir / "bundles" / "by_hand")
    status = Catalog(models_dir).status("by_hand")
    assert not status.available and status.reason is not None and "manifest" in status.reason


def test_unreadable_bundle_is_listed_unavailable(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    bundle = write_unet_bundle(models_dir / "bundles" / "evil")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["_target_"] = "os.system"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    status = Catalog(models_dir).status("evil")  # listing reads configs as data: nothing is evaluated
    assert not status.available and status.reason is not None and "manifest" in status.reason
    with pytest.raises(BundleError, match=r"network_def#_target_: os\.system \(a component outside MONAI"):
        install_models(bundle, tmp_path / "other")


def test_install_refuses_a_bad_bundle(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "src" / "bad")
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"model\.pt"):
        install_models(bundle, tmp_path / "models")
    assert not (tmp_path / "models" / "bundles" / "bad").exists()


def test_long_lived_catalog_sees_a_later_install(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    catalog = Catalog(models_dir)
    assert "late_unet" not in catalog.ids()
    install_models(write_unet_bundle(tmp_path / "src" / "late_unet"), models_dir)
    assert catalog.status("late_unet").available
    shutil.rmtree(models_dir / "bundles" / "late_unet")
    assert "late_unet" not in catalog.ids()


def test_catalog_with_bundles_does_not_import_torch(installed: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from models.catalog import Catalog; "
        f"s = Catalog(Path({str(installed)!r})).status('abdomen_unet'); assert s.available, s.reason; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "the catalog imported torch"


def test_get_predictor_dispatches_and_caches(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models import predictor as predictor_module
    from models.bundle.predictor import BundlePredictor

    monkeypatch.setattr(predictor_module, "_cache", type(predictor_module._cache)())
    card = Catalog(installed).card("abdomen_unet")
    first = predictor_module.get_predictor(card, installed)
    assert isinstance(first, BundlePredictor)
    assert predictor_module.get_predictor(card, installed) is first
    # Over budget: the least recently used model goes, the one just asked for stays.
    install_models(write_unet_bundle(installed.parent / "src" / "other_unet"), installed)
    other = Catalog(installed).card("other_unet")
    monkeypatch.setattr(predictor_module, "MODEL_CACHE_BYTES", 1)
    second = predictor_module.get_predictor(other, installed)
    assert predictor_module.get_predictor(other, installed) is second
    assert predictor_module.get_predictor(card, installed) is not first
