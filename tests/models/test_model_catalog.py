"""Model cards, weight-file verification and installation (no torch needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models import card as card_module
from models.card import ModelUnavailable
from models.catalog import Catalog, ModelStatus, builtin_cards, card_to_public
from models.install import install_models

REPO_ROOT = Path(__file__).resolve().parents[2]
STRUCTURES = "brain-mri-structures"


def test_builtin_structures_card() -> None:
    card = Catalog(Path("/nonexistent")).card(STRUCTURES)
    assert card.modality == "MR" and card.task == "anatomy" and card.architecture == "meshnet"
    assert card.num_classes == 18 and len(card.labels) == 18
    assert card.labels[1] == "Cerebral-White-Matter" and card.labels[17] == "VentralDC"
    assert card.colors[2] == (205, 62, 78)
    assert card.input["orientation"] == "LIA" and card.input["shape"] == [256, 256, 256]
    assert card.params["normalisation"] == "minmax" and card.params["axis_order"] == [0, 1, 2]
    paths = [f.path for f in card.files]
    assert paths == ["brainchop/model30chan18cls/model.json", "brainchop/model30chan18cls/model.bin"]
    for weight in card.files:
        assert weight.source_url.startswith(
            "https://github.com/neuroneural/brainchop/raw/5c540411d4a1c6b24c36d1c938cb23251617aa05/"
        )
        assert weight.source_url.endswith("public/models/model30chan18cls/" + Path(weight.path).name)
        assert len(weight.sha256) == 64 and weight.size_bytes > 0


def test_builtin_parcellation_card() -> None:
    """brainchop's model30chan50cls: colormap.json's names and colours, two names made precise."""
    card = Catalog(Path("/nonexistent")).card("brain-mri-parcellation")
    assert card.num_classes == 50 and card.task == "anatomy" and card.architecture == "meshnet"
    assert card.labels[1] == "Cerebral-White-Matter" and card.labels[15] == "Corpus callosum"
    assert card.labels[4] == "Cerebellum-Cortex" and card.labels[5] == "Thalamus"  # colormap: "Cerebellum",
    assert card.labels[16] == "ctx-bankssts" and card.labels[49] == "ctx-insula"  # "Thalamus-Proper*"
    assert card.colors[1] == (245, 245, 245) and card.colors[49] == (255, 192, 32)
    # Anchored on tissue, not clipped (see models/preprocess.py and the card's description).
    assert card.params["normalisation"] == "scale:0.95,1.15" and card.params["clip_intensities"] is False
    assert card.params["axis_order"] == [0, 1, 2]
    for weight in card.files:
        assert weight.source_url.startswith(
            "https://github.com/neuroneural/brainchop/raw/67396d2651e0bd94c9dc877405cb0e2b0364d8c1/"
            "public/models/model30chan50cls/"
        )
        assert len(weight.sha256) == 64 and weight.size_bytes > 0


def test_every_card_is_consistent() -> None:
    for card in builtin_cards():
        assert set(card.labels) == set(card.colors) == set(range(card.num_classes)), card.id
        assert card.modality in {"MR", "CT"} and card.files and card.licence and card.citation


def test_unknown_id_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no-such-model"):
        Catalog(Path("/nonexistent")).card("no-such-model")


def test_missing_file_makes_model_unavailable(tmp_path: Path) -> None:
    status = Catalog(tmp_path).status(STRUCTURES)
    assert not status.available
    assert status.reason is not None
    assert "brainchop/model30chan18cls/model.bin" in status.reason and "missing" in status.reason


@pytest.fixture()
def installed_dir(shared_models_dir: Path, tmp_path: Path) -> Path:
    models_dir = tmp_path / "models"
    installed = install_models(shared_models_dir, models_dir)
    expected = {w.path for card in builtin_cards() for w in card.files}
    assert set(installed) == expected
    return models_dir


def _installable(statuses: list[ModelStatus]) -> list[ModelStatus]:
    """Leave out TotalSegmentator's tasks: listed always, installed only by `segserve models pull`."""
    return [s for s in statuses if s.card.params.get("weights_format") != "totalseg"]


def test_install_makes_all_available(installed_dir: Path, shared_models_dir: Path) -> None:
    statuses = _installable(Catalog(installed_dir).statuses())
    assert [s.reason for s in statuses] == [None] * len(statuses)
    assert all(s.available for s in statuses)
    assert install_models(shared_models_dir, installed_dir) == []  # already there: nothing copied


def test_flipped_byte_makes_model_unavailable(installed_dir: Path) -> None:
    catalog = Catalog(installed_dir)
    assert catalog.status(STRUCTURES).available  # fills the sha256 cache
    target = installed_dir / "brainchop/model30chan18cls/model.bin"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[1234] ^= 0xFF
    target.write_bytes(bytes(data))
    # Same size; guarantee a new mtime even on file systems with coarse timestamps.
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    status = catalog.status(STRUCTURES)
    assert not status.available
    assert status.reason is not None
    assert "model30chan18cls/model.bin" in status.reason and "sha256" in status.reason


def test_wrong_size_makes_model_unavailable(installed_dir: Path) -> None:
    target = installed_dir / "brainchop/model30chan18cls/model.json"
    target.write_bytes(target.read_bytes() + b" ")
    status = Catalog(installed_dir).status(STRUCTURES)
    assert not status.available and status.reason is not None and "bytes" in status.reason


def test_install_finds_files_by_sha256(shared_models_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "downloads"
    source.mkdir()
    for weight in Catalog(shared_models_dir).card(STRUCTURES).files:
        flat_name = weight.path.replace("/", "__")
        shutil.copy(shared_models_dir / weight.path, source / flat_name)
    models_dir = tmp_path / "models"
    installed = install_models(source, models_dir)
    assert set(installed) == {w.path for w in Catalog(models_dir).card(STRUCTURES).files}
    assert Catalog(models_dir).status(STRUCTURES).available


def test_sha256_is_cached(installed_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog(installed_dir)
    catalog.statuses()
    calls = []
    real = card_module.hashlib.sha256
    monkeypatch.setattr(card_module.hashlib, "sha256", lambda *a: calls.append(a) or real(*a))
    assert all(s.available for s in _installable(catalog.statuses()))
    assert calls == []


def test_card_to_public_is_json(tmp_path: Path) -> None:
    for status in Catalog(tmp_path).statuses():
        public = card_to_public(status)
        text = json.dumps(public)
        assert str(tmp_path) not in text.replace(status.reason or "", "")
        assert public["available"] is False and public["unavailable_reason"] == status.reason
        assert set(public) >= {"id", "version", "labels", "colors", "input", "files", "licence", "citation"}
        assert json.loads(text)["labels"]["0"] == status.card.labels[0]


def test_model_unavailable_carries_reason() -> None:
    error = ModelUnavailable("file x is missing")
    assert error.reason == "file x is missing" and str(error) == "file x is missing"


def test_catalog_does_not_import_torch() -> None:
    code = "import sys, models.catalog, models.fake; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "models.catalog imported torch"


def test_fake_predictor_follows_the_predictor_contract() -> None:
    import numpy as np

    from models.card import Cancelled
    from models.fake import FakePredictor
    from segserve.imaging.volume import Volume

    card = builtin_cards()[0]
    array = np.zeros((4, 5, 6), np.int16)
    array[1:3, 2, 3] = 7
    volume = Volume(array=array, affine=np.eye(4), source_format="nifti")
    progress: list[float] = []
    labels = FakePredictor(card, label=2).predict(volume, on_progress=progress.append)
    assert labels.shape == (4, 5, 6) and labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 2}
    assert progress == sorted(progress) and progress[-1] == 1.0
    with pytest.raises(Cancelled):
        FakePredictor(card).predict(volume, is_cancelled=lambda: True)
    with pytest.raises(ModelUnavailable):
        FakePredictor(card, error=ModelUnavailable("gone")).predict(volume)
