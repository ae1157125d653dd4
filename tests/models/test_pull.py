"""`segserve models pull NAME[@VERSION]` against a local HTTP server that stands in for the Model Zoo: the
real spleen_ct_segmentation bundle (configs from ../shared/zoo, seeded weights) as a release zip named as
MONAI expects, its weights fetched through large_files.yml with md5 checks; a hash mismatch and an unknown
name or version are clear errors that install nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from models.bundle.pull import PullError, ZooSource, pull_bundle
from models.formats import InstallOptions
from models.testing.zoo import seed_bundle
from tests.support.paths import SHARED
from tests.support.stack import run_cli

NAME = "spleen_ct_segmentation"
VERSION = "0.5.9"  # the version in the bundle's configs/metadata.json
RELEASE = "Project-MONAI/model-zoo/releases/download/hosting_storage_v1"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # the test output stays readable
        pass


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Zoo bundle with seeded weights at models/model.pt (built once for the module)."""
    if not (SHARED / "zoo" / NAME).is_dir():
        pytest.skip(f"no {SHARED / 'zoo' / NAME}")
    return seed_bundle(SHARED / "zoo" / NAME, tmp_path_factory.mktemp("seeded") / NAME, seed=3)


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(served root, base URL) of a local HTTP server on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def publish(seeded: Path, root: Path, base: str, *, corrupt: str = "", in_zip: bool = False) -> str:
    """Publish the bundle as the Zoo does; returns the md5 of model.pt listed in large_files.yml.

    The weights are served at ``{base}/weights/...`` and listed in large_files.yml (the zip leaves them out,
    so pull downloads them), or put into the zip (``in_zip``). ``corrupt``: "served" changes the served
    file, "zipped" the zipped one, after the hash was taken.
    """
    weights = (seeded / "models" / "model.pt").read_bytes()
    md5 = hashlib.md5(weights).hexdigest()
    served = root / "weights" / "model_spleen_ct_segmentation_v1.pt"
    served.parent.mkdir(parents=True, exist_ok=True)
    served.write_bytes(weights + (b"x" if corrupt == "served" else b""))
    large = {"large_files": [{"path": "models/model.pt", "url": f"{base}/weights/{served.name}",
                              "hash_val": md5, "hash_type": "md5"}]}  # fmt: skip
    archive = root / RELEASE / f"{NAME}_v{VERSION}.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(seeded.rglob("*")):
            rel = path.relative_to(seeded).as_posix()
            if path.is_file() and rel not in ("models/model.pt", "large_files.yml"):
                zf.write(path, f"{NAME}/{rel}")
        zf.writestr(f"{NAME}/large_files.yml", yaml.safe_dump(large))
        if in_zip:
            zf.writestr(f"{NAME}/models/model.pt", weights + (b"x" if corrupt == "zipped" else b""))
    url = f"{base}/{RELEASE}/{archive.name}"
    index = {
        f"{NAME}_v0.3.0": {"version": "0.3.0"},
        f"{NAME}_v{VERSION}": {"version": VERSION, "source": url},
    }
    (root / "model_info.json").write_text(json.dumps(index))
    return md5


def _cli(*args: str, models_dir: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, models_dir=models_dir, data_dir=tmp / "data")


def test_pull_latest_through_the_cli_downloads_checks_and_installs(
    seeded: Path, zoo: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = zoo
    md5 = publish(seeded, root, base)
    models_dir = tmp_path / "models"
    out = _cli(
        "models", "pull", NAME, "--base-url", base, "--trust-code", models_dir=models_dir, tmp=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert f"pulled {NAME} {VERSION} (1 large file(s) hash-checked)" in out.stdout
    installed = models_dir / "bundles" / NAME
    weights = installed / "models" / "model.pt"
    assert hashlib.md5(weights.read_bytes()).hexdigest() == md5
    assert (installed / "configs" / "inference.json").read_bytes() == (
        SHARED / "zoo" / NAME / "configs" / "inference.json"
    ).read_bytes()
    listed = next(line for line in out.stdout.splitlines() if line.startswith(f"{NAME}\t"))
    assert listed.endswith("\tok"), out.stdout


def test_pull_a_named_version_with_the_weights_in_the_zip(
    seeded: Path, zoo: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = zoo
    publish(seeded, root, base, in_zip=True)
    (root / "weights").rename(root / "gone")  # nothing to download: the zipped file is checked in place
    pulled = pull_bundle(
        f"{NAME}@{VERSION}", tmp_path / "models", ZooSource(base_url=base), InstallOptions(trust_code=True)
    )
    assert (pulled.name, pulled.version, pulled.verified, pulled.unverified) == (
        NAME, VERSION, ["models/model.pt"], []
    )  # fmt: skip
    assert (tmp_path / "models" / "bundles" / NAME / "models" / "model.pt").is_file()


@pytest.mark.parametrize("corrupt", ["served", "zipped"])
def test_a_weight_whose_hash_mismatches_installs_nothing(
    seeded: Path, zoo: tuple[Path, str], tmp_path: Path, corrupt: str
) -> None:
    root, base = zoo
    md5 = publish(seeded, root, base, corrupt=corrupt, in_zip=corrupt == "zipped")
    models_dir = tmp_path / "models"
    with pytest.raises(PullError) as err:
        pull_bundle(NAME, models_dir, ZooSource(base_url=base), InstallOptions(trust_code=True))
    assert (
        str(err.value)
        == f"large file models/model.pt: md5 does not match large_files ({md5}); nothing installed"
    )
    assert not (models_dir / "bundles").exists()
    out = _cli(
        "models", "pull", NAME, "--base-url", base, "--trust-code", models_dir=models_dir, tmp=tmp_path
    )
    assert out.returncode == 2 and "md5 does not match" in out.stderr
    assert not (models_dir / "bundles").exists()


def test_unknown_name_or_version_is_a_clear_error(
    seeded: Path, zoo: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = zoo
    publish(seeded, root, base)
    source = ZooSource(base_url=base)
    with pytest.raises(PullError, match=r"^unknown bundle 'spleen_ct_segmentaton': not in the Zoo index .*"
                       r"\(similar: spleen_ct_segmentation\)$"):  # fmt: skip
        pull_bundle("spleen_ct_segmentaton", tmp_path / "models", source)
    with pytest.raises(
        PullError, match=rf"^bundle {NAME} version 9\.9\.9 not found at {base}/.*_v9\.9\.9\.zip"
    ):
        pull_bundle(f"{NAME}@9.9.9", tmp_path / "models", source)
    with pytest.raises(PullError, match=r"^not a bundle name\[@version\]: '\.\./x'$"):
        pull_bundle("../x", tmp_path / "models", source)
    assert not (tmp_path / "models").exists()


def test_the_monaihosting_layout(seeded: Path, zoo: tuple[Path, str], tmp_path: Path) -> None:
    """The same bundle under the monaihosting layout (``{name}/versions/{v}/files/{name}_v{v}.zip``)."""
    root, base = zoo
    publish(seeded, root, base)
    hosted = root / NAME / "versions" / VERSION / "files"
    hosted.mkdir(parents=True)
    shutil.move(root / RELEASE / f"{NAME}_v{VERSION}.zip", hosted)
    pulled = pull_bundle(
        f"{NAME}@{VERSION}",
        tmp_path / "models",
        ZooSource("monaihosting", base),
        InstallOptions(trust_code=True),
    )
    assert pulled.verified == ["models/model.pt"]
