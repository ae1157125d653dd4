"""Installed model folders, whatever their format: copy in atomically, hash manifest, manifest to card files.

Torch-free. Installing a model folder copies it to a temporary folder beside its target, writes
``.segserve-manifest.json`` (each file's size and sha256) and renames it into place, replacing an older
copy, so that a reader never sees a half-installed model. The card of an installed model lists the
manifest's files, so the catalog's usual check (size, sha256) marks the model unavailable when any of them
changes later.
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.card import ModelCard, WeightFile, file_sha256

log = logging.getLogger(__name__)

MANIFEST = ".segserve-manifest.json"
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class InstallError(ValueError):
    """A model folder cannot be installed; the message names the file or value and why."""


def label_colors(num_classes: int) -> dict[int, tuple[int, int, int]]:
    """Deterministic, well separated colours: 0 is black, then hues stepped by the golden angle."""
    colors: dict[int, tuple[int, int, int]] = {0: (0, 0, 0)}
    for value in range(1, num_classes):
        hue = (value * 0.618033988749895) % 1.0
        lightness = 0.45 + 0.15 * ((value // 7) % 2)
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
        colors[value] = (round(r * 255), round(g * 255), round(b * 255))
    return colors


def model_files(directory: Path) -> list[str]:
    """Relative POSIX paths of every regular file of a model folder, the manifest excluded, sorted.

    Raises:
        InstallError: the folder holds a symbolic link (its target could change behind the manifest).
    """
    files = []
    for path in sorted(Path(directory).rglob("*")):
        if path.is_symlink():
            raise InstallError(
                f"model folder {directory} contains a symbolic link ({path}); copy the file in"
            )
        if path.is_file() and path.name != MANIFEST:
            files.append(path.relative_to(directory).as_posix())
    return files


def write_manifest(directory: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file of the folder and write the manifest (atomically). Returns the manifest.

    ``extra`` keys (e.g. who trusted the model's code, the folds chosen) are stored beside ``files``.
    """
    directory = Path(directory)
    manifest: dict[str, Any] = {
        "format": 1,
        **(extra or {}),
        "files": {
            rel: {"size_bytes": (directory / rel).stat().st_size, "sha256": file_sha256(directory / rel)}
            for rel in model_files(directory)
        },
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{MANIFEST}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
    os.replace(tmp, directory / MANIFEST)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an installed folder. Raises OSError / ValueError when it is missing or unreadable."""
    manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{MANIFEST} has no 'files' table")
    return manifest


def manifest_files(manifest: dict[str, Any], rel_dir: str) -> tuple[WeightFile, ...]:
    """Card files (paths relative to the models directory) from a manifest of the folder ``rel_dir``."""
    return tuple(
        WeightFile(
            path=f"{rel_dir}/{rel}",
            sha256=str(entry["sha256"]),
            size_bytes=int(entry["size_bytes"]),
            source_url="",
        )
        for rel, entry in sorted(manifest["files"].items())
    )


def checked_model_id(name: str) -> str:
    """``name`` when it is a valid, URL-safe model id (letters, digits, . _ -), else InstallError."""
    if not MODEL_ID.fullmatch(name):
        raise InstallError(f"model folder name {name!r} is not a valid model id (letters, digits, . _ -)")
    return name


def install_folder(
    source: Path, root: Path, model_id: str, files: list[str], extra: dict[str, Any] | None = None
) -> bool:
    """Copy ``files`` (relative to ``source``) to ``root/model_id`` with a manifest, atomically.

    Returns False, copying nothing, when an intact copy of exactly these files (and ``extra``) is there.
    """
    root.mkdir(parents=True, exist_ok=True)
    target = root / model_id
    if _same_content(source, files, target, extra or {}):
        return False
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{model_id}."))
    try:
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, staging / rel)
        write_manifest(staging, extra)
        replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return True


def replace_folder(staging: Path, target: Path) -> None:
    """Move the finished folder ``staging`` to ``target`` (same file system), replacing an older ``target``
    by two renames, so that a reader sees the old folder or the new one, never a mixture."""
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        os.replace(target, old / target.name)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def _same_content(source: Path, files: list[str], target: Path, extra: dict[str, Any]) -> bool:
    """True when ``target`` is an installed copy (manifest included) of exactly ``source``'s files."""
    try:
        manifest = read_manifest(target)
        if sorted(manifest["files"]) != files or any(manifest.get(k) != v for k, v in extra.items()):
            return False
        return all(
            file_sha256(source / rel) == manifest["files"][rel]["sha256"] == file_sha256(target / rel)
            for rel in files
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def unavailable_card(model_id: str, weights_format: str, reason: str) -> ModelCard:
    """A card for an installed folder that cannot be read: listed, never available, with the reason."""
    return ModelCard(
        id=model_id,
        version="0",
        name=model_id,
        description="",
        modality="unknown",
        task="segmentation",
        architecture="unknown",
        labels={},
        colors={},
        input={},
        files=(),
        licence="",
        citation="",
        params={"weights_format": weights_format, "unavailable_reason": reason},
    )


def installed_cards(
    root: Path, weights_format: str, read_card: Callable[[Path], ModelCard]
) -> list[ModelCard]:
    """The cards of the installed model folders directly under ``root`` (hidden staging folders skipped).

    A folder ``read_card`` refuses (InstallError) is listed as a never-available card with the reason when
    its name is a valid model id, and skipped with a warning otherwise.
    """
    if not root.is_dir():
        return []
    cards = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            cards.append(read_card(directory))
        except InstallError as exc:
            if MODEL_ID.fullmatch(directory.name):
                cards.append(unavailable_card(directory.name, weights_format, str(exc)))
            else:
                log.warning("skipping %s folder %r: %s", weights_format, directory.name, exc)
    return cards
