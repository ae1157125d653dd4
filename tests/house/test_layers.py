"""The import graph keeps the house rule (tests/house/layers.py): no import goes up a layer, no cycles."""

from __future__ import annotations

from pathlib import Path

from tests.house.layers import LAYERS, import_cycles, layer_violations, module_imports

REPO = Path(__file__).resolve().parents[2]


def test_no_package_imports_one_above_it() -> None:
    graph = module_imports(REPO, LAYERS)
    assert len(graph) > 100  # the walk found the project
    assert layer_violations(graph) == []


def test_no_import_cycles() -> None:
    assert import_cycles(module_imports(REPO, LAYERS)) == []


def test_the_checks_catch_what_they_guard(tmp_path: Path) -> None:
    """A made-up tree with each kind of mistake: the foundation importing a model, a library importing
    its neighbour, a low room importing a higher one, and a two-module cycle."""
    files = {
        "segserve/__init__.py": "",
        "segserve/config.py": "from models.catalog import Catalog\n",
        "segserve/imaging/__init__.py": "",
        "segserve/imaging/volume.py": "def f():\n    from segserve.dicom import series\n",
        "segserve/dicom/__init__.py": "",
        "segserve/dicom/series.py": "from segserve.imaging.volume import f\n",
        "models/__init__.py": "",
        "models/catalog.py": "import evaluation.overlap\nfrom models import card\n",
        "models/card.py": "from models.catalog import x\n",
        "evaluation/__init__.py": "",
        "evaluation/overlap.py": "from segserve.imaging.volume import f\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = module_imports(tmp_path, ["segserve", "models", "evaluation"])
    assert layer_violations(graph) == [
        "models.catalog imports evaluation.overlap: evaluation is not below models",
        "segserve.config imports models.catalog: models is not below segserve",
        "segserve.imaging.volume imports segserve.dicom: a higher room of the foundation",
        "segserve.imaging.volume imports segserve.dicom.series: a higher room of the foundation",
    ]
    assert import_cycles(graph) == [
        ["models.card", "models.catalog"],
        ["segserve.dicom.series", "segserve.imaging.volume"],
    ]
