"""``segserve models pull totalseg-*``: fetch a TotalSegmentator task's weight zips, install them. Torch-free.

The zips come from the URLs on the card (TotalSegmentator's own GitHub release assets), or from the same
paths under ``$SEGSERVE_TOTALSEG_BASE_URL`` (a mirror, or a local server in tests; ``file://`` works too).
Each zip is streamed to disk, its sha256 checked against the card when the card pins one (TotalSegmentator
publishes none, so today it is recorded, not checked), unpacked exactly as TotalSegmentator unpacks it (into
its weights dir, ``nnunet/results/``), and the expected part folders are checked. The whole task is staged
beside its target and renamed into place with a manifest (every file's sha256, plus each zip's URL and
sha256), so a reader never sees half a task and the catalog marks it unavailable if a file changes later.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from models.card import ModelCard
from models.installed import InstallError, replace_folder, write_manifest
from models.totalseg import tasks

CHUNK = 1 << 20


def source_url(part: dict[str, Any], base: str | None = None) -> str:
    """The part's zip URL: the card's, or the same ``<release>/<folder>.zip`` under another base URL."""
    base = (base or tasks.base_url()).rstrip("/")
    if base == tasks.RELEASES_URL:
        return str(part["url"])
    return f"{base}/{part['release']}/{part['folder']}.zip"


def _download(url: str, target: Path, timeout_s: float) -> tuple[str, int]:
    """Stream ``url`` to ``target``; returns (sha256, size in bytes)."""
    digest = hashlib.sha256()
    size = 0
    request = urllib.request.Request(url, headers={"User-Agent": "segserve"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response, target.open("wb") as out:
        for chunk in iter(lambda: response.read(CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _safe_extract(archive: Path, target: Path) -> None:
    """Unpack a zip into ``target``, refusing absolute paths, ``..`` and links (nothing may escape)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise InstallError(f"{archive.name}: refusing archive member {info.filename!r}")
        zf.extractall(target)


def _check_part(card: ModelCard, part: dict[str, Any], home: Path, zip_name: str) -> None:
    """The part's nnU-Net folder is where TotalSegmentator looks, with the files and label count it needs."""
    folder = tasks.model_folder(home.parent.parent, card, part)
    checkpoints = [f"fold_{f}/checkpoint_final.pth" for f in tasks.folds(card)]
    for rel in ("dataset.json", "plans.json", *checkpoints):
        if not (folder / rel).is_file():
            raise InstallError(f"{zip_name}: {folder.relative_to(home)}/{rel} is missing after unpacking")
    labels = json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("labels", {})
    n_expected = len(part["labels"])
    n_found = len([k for k, v in labels.items() if v != 0 and k != "background"])
    if n_found != n_expected:
        raise InstallError(
            f"{zip_name}: dataset.json has {n_found} foreground labels, TotalSegmentator's class map for "
            f"dataset {part['dataset_id']} has {n_expected}"
        )


def pull(
    card_id: str,
    models_dir: Path,
    *,
    base: str | None = None,
    timeout_s: float = 60.0,
    validate: Callable[[ModelCard, Path], None] | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Download, check and install the task ``card_id`` under ``models_dir``; returns its installed folder.

    ``validate(card, staged_models_dir)`` may load the staged parts (e.g. build each network and load its
    weights) before the task goes live. Raises InstallError (bad archive, checksum, layout), OSError /
    urllib errors (network), KeyError (unknown id).
    """
    card = tasks.task_card(card_id)
    target = tasks.home_dir(models_dir, card_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_models = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{card_id}.pull."))
    try:
        home = tasks.home_dir(staging_models, card_id)
        weights_dir = home / "nnunet" / "results"
        weights_dir.mkdir(parents=True)
        sources: dict[str, dict[str, Any]] = {}
        for part in tasks.parts(card):
            url = source_url(part, base)
            zip_path = staging_models / f"{part['folder']}.zip"
            say(f"downloading {url}")
            sha256, size = _download(url, zip_path, timeout_s)
            pinned = part.get("sha256")
            if pinned and pinned != sha256:
                raise InstallError(f"{url}: sha256 {sha256}, the card pins {pinned}")
            say(f"  {size} bytes, sha256 {sha256}" + (" (matches the card)" if pinned else " (recorded)"))
            _safe_extract(zip_path, weights_dir)
            zip_path.unlink()
            _check_part(card, part, home, f"{part['folder']}.zip")
            sources[url] = {"sha256": sha256, "size_bytes": size, "sha256_pinned": bool(pinned)}
        if validate is not None:
            validate(card, staging_models)
        write_manifest(
            home,
            {
                "card_id": card.id,
                "card_version": card.version,
                "totalsegmentator_version": card.params["totalsegmentator_version"],
                "sources": sources,
            },
        )
        replace_folder(home, target)
    finally:
        shutil.rmtree(staging_models, ignore_errors=True)
    return target
