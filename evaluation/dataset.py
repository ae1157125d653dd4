"""Finding cases on disk: a folder of predictions against a folder of references, or a dataset in the
nnU-Net v2 / Medical Segmentation Decathlon layout (`dataset.json`, `imagesTs/<case>_0000.nii.gz`,
`labelsTs/<case>.nii.gz`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_VOLUME_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.mgz|\.mgh|\.nrrd)$", re.IGNORECASE)
_CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


class DatasetError(ValueError):
    """A folder or dataset that cannot be evaluated as given; the message says what to fix."""


@dataclass(frozen=True)
class CasePair:
    case_id: str
    prediction: Path
    reference: Path


@dataclass(frozen=True)
class DatasetCase:
    case_id: str
    image: Path  # channel 0000; single-channel models only
    reference: Path


@dataclass(frozen=True)
class Dataset:
    root: Path
    name: str
    labels: dict[int, str]  # value -> name, background (0) included when listed
    cases: list[DatasetCase]


def case_id_of(path: Path) -> str:
    """`case_001.nii.gz` -> `case_001`."""
    return _VOLUME_SUFFIX.sub("", path.name)


def _volumes(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"not a folder: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and _VOLUME_SUFFIX.search(path.name) and not path.name.startswith("."):
            found[case_id_of(path)] = path
    return found


def pair_folders(predictions: Path, references: Path) -> list[CasePair]:
    """Pair files by case id (file name without its extension). Every reference needs a prediction."""
    preds = _volumes(predictions)
    refs = _volumes(references)
    if not refs:
        raise DatasetError(f"no label volumes (.nii.gz, .nii, .mgz, .nrrd) in {references}")
    missing = sorted(set(refs) - set(preds))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DatasetError(f"{len(missing)} reference case(s) have no prediction in {predictions}: {shown}")
    return [CasePair(case_id, preds[case_id], refs[case_id]) for case_id in sorted(refs)]


def parse_labels(raw: object) -> dict[int, str]:
    """Labels from a dataset.json: nnU-Net v2 `{"background": 0, "spleen": 1}` or MSD
    `{"0": "background", "1": "spleen"}`. Region labels (lists of values) are not supported."""
    if not isinstance(raw, dict) or not raw:
        raise DatasetError("dataset.json has no 'labels' mapping")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            labels[value] = str(key)  # v2: name -> value
        elif isinstance(value, str) and str(key).lstrip("-").isdigit():
            labels[int(key)] = value  # MSD: "value" -> name
        else:
            raise DatasetError(
                f"dataset.json label {key!r}: {value!r} is not supported (region labels are not)"
            )
    if any(v < 0 for v in labels):
        raise DatasetError(f"negative label values in dataset.json: {sorted(v for v in labels if v < 0)}")
    return labels


def read_dataset(root: Path) -> Dataset:
    """A dataset folder with `dataset.json`, `imagesTs/` and `labelsTs/`."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root} has no dataset.json (nnU-Net v2 / Decathlon layout expected)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset.json is not valid JSON: {exc}") from None
    labels = parse_labels(meta.get("labels"))
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    if len(channels) != 1:
        raise DatasetError(f"only single-channel datasets are supported, dataset.json lists {len(channels)}")
    images = root / "imagesTs"
    refs = _volumes(root / "labelsTs")
    cases: list[DatasetCase] = []
    for case_id, image in _volumes(images).items():
        match = _CHANNEL_SUFFIX.search(case_id)
        base = case_id[: match.start()] if match else case_id
        if match and match.group(1) != "0000":
            continue
        if base not in refs:
            raise DatasetError(f"case {base} has an image in imagesTs but no label in labelsTs")
        cases.append(DatasetCase(base, image, refs[base]))
    if not cases:
        raise DatasetError(f"no test images (<case>_0000.nii.gz) in {images}")
    return Dataset(root=root, name=str(meta.get("name", root.name)), labels=labels, cases=cases)
