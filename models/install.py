"""Installing models into a models directory: installable formats, then the built-in cards' weight files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from models.card import ModelCard, check_file, file_sha256
from models.catalog import builtin_cards
from models.format import InstallOptions
from models.formats import formats


def install_models(
    source_dir: Path,
    models_dir: Path,
    cards: Iterable[ModelCard] | None = None,
    options: InstallOptions | None = None,
) -> list[str]:
    """Install models of every format found at ``source_dir``, then the built-in cards' weight files.

    When ``source_dir`` is itself a model of an installable format (a MONAI bundle directory, ...), only
    it is installed (see that format's ``install``, e.g. :func:`models.bundle.install.install_bundle`);
    otherwise every model of a format found directly under ``source_dir/<format folder>/`` is, and then the
    built-in cards' (or ``cards``') weight files are copied, verifying sha256.

    A file is taken from ``source_dir/<path>`` when that matches, otherwise from any file under
    ``source_dir`` with the right size and sha256. Files already intact in ``models_dir`` are left alone;
    files not found are skipped (the catalog then reports the model unavailable). Copies go through a
    temporary file and an atomic rename, so a reader never sees a half-written file.

    Returns:
        relative paths of the files copied.
    """
    source_dir, models_dir = Path(source_dir), Path(models_dir)
    options = options or InstallOptions()
    installed_models: list[str] = []
    for fmt in formats():
        found = fmt.find(source_dir)
        if found and found[0] == source_dir:
            return fmt.install(source_dir, models_dir, options)
        installed_models += [path for model in found for path in fmt.install(model, models_dir, options)]
    wanted = [w for card in (builtin_cards() if cards is None else cards) for w in card.files]
    by_size: dict[int, list[Path]] = {}
    installed: list[str] = []
    for weight in wanted:
        if check_file(weight, models_dir) is None:
            continue
        source: Path | None = source_dir / weight.path
        if check_file(weight, source_dir) is not None:
            if not by_size:
                for p in source_dir.rglob("*"):
                    if p.is_file():
                        by_size.setdefault(p.stat().st_size, []).append(p)
            candidates = by_size.get(weight.size_bytes, [])
            source = next((p for p in candidates if file_sha256(p) == weight.sha256), None)
        if source is None:
            continue
        target = models_dir / weight.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp_name)
            if file_sha256(Path(tmp_name)) != weight.sha256:
                raise OSError(f"copy of {source} to {target} does not match sha256 {weight.sha256}")
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        installed.append(weight.path)
    return installed + installed_models
