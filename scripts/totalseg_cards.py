"""Write the TotalSegmentator cards (models/totalseg/cards/*.json) from the installed `totalsegmentator`.

Run after upgrading the pinned TotalSegmentator version:
    PYTHONPATH=$PWD .venv/bin/python scripts/totalseg_cards.py

Everything on a card is read from TotalSegmentator's own tables, so the cards say exactly what that version
does: the task's dataset ids, trainer and resampling (``python_api.get_task_config``), the weights release
and folder name of each dataset (``map_tasks_config.TASK_ID_WEIGHTS_CONFIGS``) and so the download URL
(``libs.download_pretrained_weights``), the class names (``map_to_binary.class_map``) and which part label
goes to which final label (``class_map_5_parts`` / ``class_map_parts_mr``). TotalSegmentator publishes no
checksums for its weight zips; the cards say so (``sha256: null``) and pin the release URL and package
version instead.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

from totalsegmentator import map_to_binary
from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
from totalsegmentator.python_api import get_task_config

from models.installed import label_colors
from models.totalseg.tasks import RELEASES_URL

CARDS = Path(__file__).resolve().parents[1] / "models" / "totalseg" / "cards"
README = "https://github.com/wasserth/TotalSegmentator#readme"
CITATION = (
    "Wasserthal J. et al., TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images, "
    "Radiology: Artificial Intelligence 2023, doi:10.1148/ryai.230024; Isensee F. et al., nnU-Net, "
    "Nature Methods 2021, doi:10.1038/s41592-020-01008-z"
)
CITATION_MR = (
    "D'Antonoli T.A. et al., TotalSegmentator MRI: Robust Sequence-independent Segmentation of Multiple "
    "Anatomic Structures in MRI, Radiology 2025, doi:10.1148/radiol.241613; " + CITATION
)
# (card id, TotalSegmentator task, mode, modality)
TASKS = [
    ("totalseg-total", "total", "default", "CT"),
    ("totalseg-total-fast", "total", "fast", "CT"),
    ("totalseg-total-fastest", "total", "fastest", "CT"),
    ("totalseg-total-mr", "total_mr", "default", "MR"),
    ("totalseg-total-mr-fast", "total_mr", "fast", "MR"),
    ("totalseg-total-mr-fastest", "total_mr", "fastest", "MR"),
]
PART_MAPS = {
    "total": ("class_map_5_parts", "map_taskid_to_partname_ct"),
    "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr"),
}


def _licence(task: str) -> str:
    if task in map_to_binary.commercial_models:
        return (
            f"TotalSegmentator task '{task}': licensed weights (free for non-commercial use, commercial use "
            f"needs a licence: https://backend.totalsegmentator.com/license-academic/)"
        )
    return (
        f"TotalSegmentator task '{task}': open weights ('Openly available for any usage', {README}); "
        f"TotalSegmentator code Apache-2.0"
    )


def card(card_id: str, task: str, mode: str, modality: str, version: str) -> dict[str, Any]:
    # python_api.totalsegmentator passes its default plans="nnUNetPlans" through.
    config = get_task_config(
        task, fast=mode == "fast", fastest=mode == "fastest", quiet=True, plans="nnUNetPlans"
    )
    ids = config["task_id"] if isinstance(config["task_id"], list) else [config["task_id"]]
    class_map = map_to_binary.class_map[task]
    parts_name, partname_name = PART_MAPS[task]
    part_maps = getattr(map_to_binary, parts_name)
    partnames = getattr(map_to_binary, partname_name)
    parts = []
    for tid in ids:
        weights = TASK_ID_WEIGHTS_CONFIGS[tid]
        folder, release = weights["foldername"], weights["version"]
        # A multi-part task maps each part's labels to the task's labels by class name.
        part_labels = part_maps[partnames[tid]] if len(ids) > 1 else class_map
        parts.append(
            {
                "dataset_id": tid,
                "folder": folder,
                "release": release,
                "url": f"{RELEASES_URL}/{release}/{folder}.zip",
                "sha256": None,
                "labels": {str(k): v for k, v in sorted(part_labels.items())},
            }
        )
    resample = config["resample"]
    spacing = [float(resample)] * 3 if not isinstance(resample, list) else [float(r) for r in resample]
    nice = {
        "default": "",
        "fast": f" ({spacing[0]:g} mm, --fast)",
        "fastest": f" ({spacing[0]:g} mm, --fastest)",
    }
    return {
        "id": card_id,
        "version": f"{version}+{parts[0]['release']}",
        "name": f"TotalSegmentator {task}{nice[mode]}",
        "description": (
            f"TotalSegmentator {version} task '{task}'"
            + (f" --{mode}" if mode != "default" else "")
            + f": {len(class_map)} structures, "
            + (f"{len(ids)} nnU-Net v2 part models merged" if len(ids) > 1 else "one nnU-Net v2 model")
            + f" at {spacing[0]:g} mm, with TotalSegmentator's own pre- and post-processing. "
            f"Pull with: segserve models pull {card_id}"
        ),
        "modality": modality,
        "task": "segmentation",
        "architecture": f"nnU-Net v2 {config['model']} ({config['trainer']}__{config['plans']})",
        "labels": {"0": "background", **{str(k): v for k, v in sorted(class_map.items())}},
        "colors": {str(k): list(v) for k, v in label_colors(max(class_map) + 1).items()},
        "input": {"spacing_mm": spacing, "expects": f"{modality} volume, any orientation"},
        "files": [],
        "licence": _licence(task),
        "citation": CITATION_MR if modality == "MR" else CITATION,
        "params": {
            "weights_format": "totalseg",
            "totalsegmentator_version": version,
            "totalseg_task": task,
            "mode": mode,
            "resample_mm": spacing,
            "trainer": config["trainer"],
            "plans": config["plans"],
            "configuration": config["model"],
            "folds": config["folds"],
            "checksums": "TotalSegmentator publishes no checksums for its weight zips: the URL and release "
            "tag are pinned; `segserve models pull` records each zip's sha256 in the installed manifest",
            "parts": parts,
        },
    }


def main() -> int:
    version = importlib.metadata.version("TotalSegmentator")
    CARDS.mkdir(parents=True, exist_ok=True)
    for card_id, task, mode, modality in TASKS:
        data = card(card_id, task, mode, modality, version)
        (CARDS / f"{card_id}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"{card_id}: {len(data['labels']) - 1} classes, {len(data['params']['parts'])} part(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
