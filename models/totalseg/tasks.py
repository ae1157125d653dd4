"""TotalSegmentator's tasks as catalog cards, and where their pulled weights live. Torch-free.

The cards (``cards/*.json``) are written by ``scripts/totalseg_cards.py`` from the pinned ``totalsegmentator``
package's own tables. A task is listed whether or not its weights are here; until ``segserve models pull`` has
installed them its card is unavailable with the reason "not installed: segserve models pull <id>".

Layout (exactly TotalSegmentator's, so that its own code can run on the folder): the task ``<id>`` lives
in ``<models_dir>/totalseg/<id>/``, which is a ``TOTALSEG_HOME_DIR``: the weights dir is ``nnunet/results/``
below it and each part model is ``nnunet/results/<DatasetNNN_name>/<trainer>__<plans>__<configuration>/`` with
``dataset.json``, ``plans.json`` and ``fold_0/checkpoint_final.pth``, as the release zips unpack.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.card import ModelCard, card_from_dict
from models.format import InstallOptions, ModelFormat
from models.installed import MANIFEST, manifest_files, read_manifest

FOLDER = "totalseg"
WEIGHTS_FORMAT = "totalseg"
# Where TotalSegmentator itself downloads its open weights from (libs.download_pretrained_weights).
RELEASES_URL = "https://github.com/wasserth/TotalSegmentator/releases/download"
BASE_URL_ENV = "SEGSERVE_TOTALSEG_BASE_URL"
CARDS_DIR = Path(__file__).resolve().parent / "cards"


def base_url() -> str:
    """The releases base URL: ``$SEGSERVE_TOTALSEG_BASE_URL`` (a mirror, a local test server) or GitHub's."""
    return os.environ.get(BASE_URL_ENV, "").rstrip("/") or RELEASES_URL


def task_cards() -> list[ModelCard]:
    """The TotalSegmentator cards as shipped (nothing installed), sorted by id."""
    paths = sorted(CARDS_DIR.glob("*.json"))
    return [card_from_dict(json.loads(p.read_text(encoding="utf-8"))) for p in paths]


def task_card(card_id: str) -> ModelCard:
    """The shipped card ``card_id``; KeyError naming the known ids when there is none."""
    cards = {c.id: c for c in task_cards()}
    if card_id not in cards:
        raise KeyError(f"no TotalSegmentator task {card_id!r}; known: {sorted(cards)}")
    return cards[card_id]


def parts(card: ModelCard) -> list[dict[str, Any]]:
    """The card's part models: dataset_id, folder, release, url, sha256 (None: not published), labels."""
    return list(card.params["parts"])  # type: ignore[call-overload]


def folds(card: ModelCard) -> list[int]:
    """The nnU-Net folds TotalSegmentator runs for the task (``[0]`` for these tasks)."""
    return [int(f) for f in card.params["folds"]]  # type: ignore[attr-defined]


def resample_mm(card: ModelCard) -> list[float]:
    """The spacing (x, y, z, mm) TotalSegmentator resamples the scan to before its models run."""
    return [float(s) for s in card.params["resample_mm"]]  # type: ignore[attr-defined]


def home_dir(models_dir: Path, card_id: str) -> Path:
    """The task's ``TOTALSEG_HOME_DIR`` under a models directory."""
    return Path(models_dir) / FOLDER / card_id


def model_folder(models_dir: Path, card: ModelCard, part: dict[str, Any]) -> Path:
    """The nnU-Net trained model folder of one part, where TotalSegmentator looks for it."""
    p = card.params
    name = f"{p['trainer']}__{p['plans']}__{p['configuration']}"
    return home_dir(models_dir, card.id) / "nnunet" / "results" / str(part["folder"]) / name


def installed_cards(models_dir: Path) -> list[ModelCard]:
    """Every task's card: with its installed files (manifest) when pulled, else unavailable, with why."""
    cards = []
    for card in task_cards():
        rel = f"{FOLDER}/{card.id}"
        try:
            manifest = read_manifest(Path(models_dir) / rel)
        except (OSError, ValueError):
            reason = f"not installed: segserve models pull {card.id}"
            cards.append(replace(card, params={**card.params, "unavailable_reason": reason}))
            continue
        if manifest.get("card_version") != card.version:
            reason = (
                f"installed version {manifest.get('card_version')!r} is not the catalog's {card.version!r}: "
                f"segserve models pull {card.id}"
            )
            cards.append(replace(card, params={**card.params, "unavailable_reason": reason}))
            continue
        cards.append(replace(card, files=manifest_files(manifest, rel)))
    return cards


def find_none(source: Path) -> list[Path]:
    """TotalSegmentator tasks are installed with ``segserve models pull``, never from a local folder."""
    return []


def refuse_install(source: Path, models_dir: Path, options: InstallOptions) -> list[str]:
    raise ValueError(f"TotalSegmentator tasks install with 'segserve models pull <id>', not from {source}")


TOTALSEG_FORMAT = ModelFormat(
    name=WEIGHTS_FORMAT,
    folder=FOLDER,
    watched=(MANIFEST,),
    find=find_none,
    install=refuse_install,
    cards=installed_cards,
    predictor="models.totalseg.predictor:TotalSegPredictor",
)
