"""`segserve models pull NAME[@VERSION]`: fetch a MONAI Model Zoo bundle the way MONAI does, check the hashes
of its large files, install it.

Fetching is MONAI's own code: :func:`monai.bundle.download` (given the URL of the source's layout) downloads
and extracts the bundle zip, and :func:`monai.apps.utils.download_url` checks (or downloads, then checks)
every file that the bundle's ``large_files.yml`` / ``.yaml`` / ``.json`` names, with its ``hash_type`` and
``hash_val``.
Only a bundle whose files all match is installed (:func:`models.install.install_models`); a mismatch, an
unknown name or version, or a failed download is a :class:`PullError` and nothing is installed.

Sources (the layouts MONAI's ``download`` knows), each on its public host unless ``base_url`` names a stand-in
(a mirror, or a local server in tests):

    github         ``{base}/{owner}/{repo}/releases/download/{tag}/{name}_v{version}.zip``; ``repo`` is
                   ``owner/repo/tag`` (default ``Project-MONAI/model-zoo/hosting_storage_v1``, the Zoo's
                   release assets); base ``https://github.com``.
    monaihosting   ``{base}/{name}/versions/{version}/files/{name}_v{version}.zip`` (lower-case name in the
                   path); base MONAI's ``MONAI_HOSTING_BASE_URL``.
    ngc            ``{base}/monai_{name}/versions/{version}/files`` lists the files (JSON ``modelFiles``),
                   each fetched from ``.../files/{path}``; base MONAI's ``NGC_BASE_URL``.

Versions: without ``@VERSION`` the latest version in the Zoo index (``model_info.json``, keys
``{name}_v{version}``) is taken; the index is ``index_url``, by default the Zoo's own
(``raw.githubusercontent.com/Project-MONAI/model-zoo/dev/models/model_info.json``), or
``{base_url}/model_info.json`` when a stand-in base is given.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.format import InstallOptions

log = logging.getLogger(__name__)

SOURCES = ("github", "monaihosting", "ngc")
DEFAULT_REPO = "Project-MONAI/model-zoo/hosting_storage_v1"
ZOO_INDEX_URL = "https://raw.githubusercontent.com/Project-MONAI/model-zoo/dev/models/model_info.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.+-]*$")


class PullError(Exception):
    """The bundle could not be fetched or verified; nothing was installed."""


@dataclass(frozen=True)
class ZooSource:
    """Where bundles come from (see the module docstring for the layouts)."""

    source: str = "github"
    base_url: str | None = None
    repo: str = DEFAULT_REPO
    index_url: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise PullError(f"unknown source {self.source!r} (one of {', '.join(SOURCES)})")
        if self.source == "github" and len(self.repo.split("/")) != 3:
            raise PullError(f"repo must be owner/name/release_tag for the github source, got {self.repo!r}")

    def _base(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.source == "github":
            return "https://github.com"
        from monai.bundle import scripts

        return scripts.MONAI_HOSTING_BASE_URL if self.source == "monaihosting" else scripts.NGC_BASE_URL

    def bundle_url(self, name: str, version: str) -> str:
        """The URL of the bundle zip (github, monaihosting) or of its file listing (ngc)."""
        base = self._base()
        if self.source == "github":
            owner, repo, tag = self.repo.split("/")
            return f"{base}/{owner}/{repo}/releases/download/{tag}/{name}_v{version}.zip"
        if self.source == "monaihosting":
            return f"{base}/{name.lower()}/versions/{version}/files/{name}_v{version}.zip"
        ngc_name = name if name.startswith("monai_") else f"monai_{name}"
        return f"{base}/{ngc_name.lower()}/versions/{version}/files"

    def index(self) -> str:
        """The URL of the Zoo index (``model_info.json``)."""
        if self.index_url:
            return self.index_url
        return f"{self.base_url.rstrip('/')}/model_info.json" if self.base_url else ZOO_INDEX_URL


@dataclass(frozen=True)
class Pulled:
    """What a pull installed: the bundle's name and version, the installed paths, and the large files that
    were checked (``verified``) or that the bundle lists with no hash (``unverified``, installed as given)."""

    name: str
    version: str
    installed: list[str]
    verified: list[str]
    unverified: list[str]


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@VERSION`` -> (name, version or None)."""
    name, _, version = ref.partition("@")
    if not _NAME.match(name) or (version and not _VERSION.match(version)):
        raise PullError(f"not a bundle name[@version]: {ref!r}")
    return name, version or None


def _version_key(version: str) -> tuple[Any, ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


def _read_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read().decode("utf-8"))


def zoo_versions(name: str, source: ZooSource) -> list[str]:
    """The versions of bundle ``name`` in the Zoo index, oldest first; PullError when it has none."""
    url = source.index()
    try:
        index = _read_json(url)
    except (OSError, ValueError) as exc:
        raise PullError(f"cannot read the Zoo index {url}: {exc}") from None
    if not isinstance(index, dict):
        raise PullError(f"the Zoo index {url} is not a JSON object")
    prefix = f"{name}_v"
    versions = sorted((k[len(prefix) :] for k in index if k.startswith(prefix)), key=_version_key)
    if not versions:
        near = sorted({k.rsplit("_v", 1)[0] for k in index if name.lower()[:5] in k.lower()})[:5]
        hint = f" (similar: {', '.join(near)})" if near else ""
        raise PullError(f"unknown bundle {name!r}: not in the Zoo index {url}{hint}")
    return versions


def _fetch(name: str, version: str, source: ZooSource, into: Path) -> Path:
    """Download and extract the bundle with MONAI's own functions; returns the bundle folder."""
    from monai.apps.utils import download_url
    from monai.bundle import download

    url = source.bundle_url(name, version)
    try:
        if source.source == "ngc":
            listing = _read_json(url)
            files = [f["path"] for f in listing["modelFiles"]]
            for rel in files:
                download_url(url=f"{url}/{rel}", filepath=_inside(into / name, rel), progress=False)
        else:
            download(name=name, version=version, bundle_dir=str(into), url=url, progress=False)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise PullError(f"bundle {name} version {version} not found at {url} (HTTP 404)") from None
        raise PullError(f"download of {url} failed: HTTP {exc.code}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise PullError(f"download of {name} {version} from {url} failed: {exc}") from None
    bundle = into / name
    if not (bundle / "configs").is_dir():
        raise PullError(f"{url} holds no bundle folder {name}/ with configs/")
    return bundle


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing paths that leave ``root`` (a large_files entry or listing is untrusted)."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise PullError(f"unsafe path {rel!r}: outside the bundle")
    return target


def large_files(bundle: Path) -> list[dict[str, Any]]:
    """The entries of the bundle's ``large_files.yml`` / ``.yaml`` / ``.json`` (``[]`` when it has none)."""
    from monai.bundle import ConfigParser

    found = [p for p in sorted(bundle.glob("large_files*")) if p.suffix in (".yml", ".yaml", ".json")]
    if not found:
        return []
    content = ConfigParser.load_config_file(found[0])
    entries = content.get("large_files", []) if isinstance(content, dict) else []
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e for e in entries):
        raise PullError(f"{found[0].name}: 'large_files' must be a list of entries with a 'path'")
    return entries


def check_large_files(bundle: Path) -> tuple[list[str], list[str]]:
    """Check every large file of ``bundle`` against its hash, downloading those not in the zip.

    Uses MONAI's ``download_url``: a file already present is hash-checked; a missing one is downloaded from
    its ``url`` and hash-checked before it is moved into place.
    Returns (verified paths, paths without a hash).
    """
    from monai.apps.utils import HashCheckError, download_url

    verified: list[str] = []
    unverified: list[str] = []
    for entry in large_files(bundle):
        rel = str(entry["path"])
        target = _inside(bundle, rel)
        hash_val = str(entry.get("hash_val") or "")
        hash_type = str(entry.get("hash_type") or "md5")
        url = str(entry.get("url") or "")
        if not target.exists() and not url.startswith(("http://", "https://")):
            raise PullError(f"large file {rel}: not in the bundle and no http(s) url to fetch it from")
        try:
            download_url(
                url=url, filepath=target, hash_val=hash_val or None, hash_type=hash_type, progress=False
            )
        except HashCheckError:
            raise PullError(
                f"large file {rel}: {hash_type} does not match large_files ({hash_val}); nothing installed"
            ) from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise PullError(f"large file {rel}: download from {url} failed: {exc}") from None
        (verified if hash_val else unverified).append(rel)
    return verified, unverified


def pull_bundle(
    ref: str,
    models_dir: Path,
    source: ZooSource | None = None,
    options: InstallOptions | None = None,
) -> Pulled:
    """Fetch ``NAME[@VERSION]`` from ``source``, check its large files' hashes and its version, and install it
    into ``models_dir`` (as :func:`models.install.install_models` does for a local folder, with ``options``,
    e.g. ``trust_code``). Raises PullError (nothing installed) or the installer's error."""
    from models.install import install_models

    source = source or ZooSource()
    name, version = parse_ref(ref)
    if version is None:
        version = zoo_versions(name, source)[-1]
    work = Path(tempfile.mkdtemp(prefix="segserve-pull-"))
    try:
        bundle = _fetch(name, version, source, work)
        meta_version = _metadata_version(bundle)
        if meta_version is not None and meta_version != version:
            raise PullError(f"{name}: asked for version {version}, the bundle's metadata says {meta_version}")
        verified, unverified = check_large_files(bundle)
        for rel in unverified:
            log.warning(
                "bundle %s %s: large file %s has no hash in large_files; not verified", name, version, rel
            )
        installed = install_models(bundle, Path(models_dir), options=options)
        return Pulled(name, version, installed, verified, unverified)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _metadata_version(bundle: Path) -> str | None:
    try:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version") if isinstance(meta, dict) else None
    return str(version) if version is not None else None
