"""Installing MONAI bundles: MONAI builds them, code needs --trust-code (named), install-time validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle.build import build
from models.bundle.config import BundleError, read_bundle
from models.bundle.install import check_bundle
from models.catalog import Catalog
from models.formats import InstallOptions
from models.install import install_models
from models.installed import read_manifest
from models.testing.make_bundle import write_unet_bundle
from tests.support.stack import run_cli


def _edit(bundle: Path, **changes: object) -> None:
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _post(bundle: Path, step: dict[str, object]) -> None:
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["postprocessing"]["transforms"].append(step)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))


def test_declarative_bundle_is_built_by_monai(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "spleen_unet", roi_size=(32, 32, 16), largest_component=[1])
    checked = check_bundle(bundle, trust_code=False)
    assert checked["executes_code"] is False and checked["weights"] == "models/model.pt"
    assert checked["labels"] == {"0": "background", "1": "spleen"} and checked["out_channels"] == 2
    pipeline = build(bundle)
    names = [type(t).__name__ for t in pipeline.postprocessing.transforms]  # type: ignore[attr-defined]
    assert names == ["Activationsd", "AsDiscreted", "KeepLargestConnectedComponentd"]
    assert type(pipeline.inferer).__name__ == "SlidingWindowInferer" and pipeline.inferer.roi_size == [
        32,
        32,
        16,
    ]


def test_wrapped_state_dict_loads(tmp_path: Path) -> None:
    a = build(write_unet_bundle(tmp_path / "wrapped", wrap_state=True)).network
    b = build(write_unet_bundle(tmp_path / "plain")).network
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_missing_files_are_named(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"model\.pt"):
        build(bundle)
    (bundle / "configs" / "metadata.json").unlink()
    with pytest.raises(BundleError, match=r"metadata\.json is missing"):
        read_bundle(bundle)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (  # a $ expression
            {
                "postprocessing": {
                    "_target_": "Compose",
                    "transforms": [
                        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                        {
                            "_target_": "Lambdad",
                            "keys": "pred",
                            "func": "$lambda x: x.argmax(0, keepdim=True)",
                        },
                    ],
                }
            },
            r"postprocessing#transforms#1#func: \$lambda x: x\.argmax",
        ),
        (  # a class from the bundle's scripts/
            {
                "postprocessing": {
                    "_target_": "Compose",
                    "transforms": [{"_target_": "scripts.my_transforms.MergeClassesd", "keys": "pred"}],
                }
            },
            r"postprocessing#transforms#0#_target_: scripts\.my_transforms\.MergeClassesd \(a component out",
        ),
        (  # an import of code that is not MONAI's
            {"imports": ["$import glob", "$import scripts.register"]},
            r"imports#1: \$import scripts\.register",
        ),
        (  # a callable outside MONAI
            {"network_def": {"_target_": "os.system", "command": "touch /tmp/segserve-pwned"}},
            r"network_def#_target_: os\.system \(a component outside MONAI",
        ),
        (  # a MONAI function that is not a transform, network, inferer or dataset
            {"inferer": {"_target_": "run_cmd", "cmd_list": ["true"]}},
            r"inferer#_target_: run_cmd \(a component in monai\.utils",
        ),
        (  # a reference to an expression
            {"pixdim": "$[1.5, 1.5, 2.0]"},
            r"pixdim: \$\[1\.5, 1\.5, 2\.0\]",
        ),
    ],
)
def test_code_needs_trust_and_the_refusal_names_the_first_element(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    _edit(bundle, **change)
    with pytest.raises(BundleError, match=named):
        install_models(bundle, tmp_path / "models")
    assert not (tmp_path / "models" / "bundles" / "b").exists()
    assert "b" not in Catalog(tmp_path / "models").ids()


def test_nothing_from_an_untrusted_bundle_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bundle = write_unet_bundle(tmp_path / "b")
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _edit(bundle, imports=["$import scripts"], output_dir=f"$open({str(marker)!r}, 'w')")
    _post(
        bundle,
        {"_target_": "Lambdad", "keys": "pred", "func": f"$open({str(marker)!r}, 'w') and (lambda x: x)"},
    )
    with pytest.raises(BundleError, match=r"imports#0: \$import scripts"):
        install_models(bundle, tmp_path / "models")
    with pytest.raises(BundleError, match="--trust-code"):
        build(bundle)
    assert not marker.exists()


def test_debug_mode_is_refused_even_when_trusted(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    _post(bundle, {"_target_": "AsDiscreted", "keys": "pred", "_mode_": "debug"})
    with pytest.raises(BundleError, match=r"cannot be honoured: postprocessing#transforms#2#_mode_"):
        install_models(bundle, tmp_path / "models", options=InstallOptions(trust_code=True))


def test_trusted_install_records_who_and_shows_executes_code(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "coded")
    _post(bundle, {"_target_": "Lambdad", "keys": "pred", "func": "$lambda x: x * 2"})
    models_dir = tmp_path / "models"
    refused = run_cli("models", "install", str(bundle), models_dir=models_dir, data_dir=tmp_path / "data")
    assert refused.returncode == 2 and "postprocessing#transforms#2#func: $lambda x: x * 2" in refused.stderr
    done = run_cli(
        "models",
        "install",
        "--trust-code",
        "--installed-by",
        "dr-admin",
        str(bundle),
        models_dir=models_dir,
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(models_dir / "bundles" / "coded")
    assert manifest["trusted_code"] is True and manifest["installed_by"] == "dr-admin"
    assert manifest["labels"] == {"0": "background", "2": "spleen"}  # the Lambdad's values
    from models.card import file_sha256
    from models.catalog import card_to_public
    from segserve.audit import query
    from segserve.db import session_scope

    public = card_to_public(Catalog(models_dir).status("coded"))
    assert public["executes_code"] is True and public["available"] is True
    with session_scope(f"sqlite:///{tmp_path / 'data' / 'segserve.db'}") as session:
        (event,) = query(session, resource_id="coded", action="model.install")
        assert event.detail["installed_by"] == "dr-admin" and event.detail["trusted_code"] is True
        assert event.detail["manifest_sha256"] == file_sha256(
            models_dir / "bundles" / "coded" / ".segserve-manifest.json"
        )


def test_weights_that_do_not_fit_are_refused_and_never_listed(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b", channels=(8, 16, 32))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["channels"] = [4, 8, 16]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"model\.pt does not fit the network"):
        install_models(bundle, tmp_path / "models")
    assert Catalog(tmp_path / "models").ids() == [c for c in Catalog(tmp_path / "models").ids() if c != "b"]


def test_network_argument_monai_cannot_take_is_named_at_install(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["img_size"] = [96, 96, 96]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"network_def cannot be built by MONAI.*img_size"):
        install_models(bundle, tmp_path / "models")
    assert not (tmp_path / "models" / "bundles" / "b").exists()


def test_forward_failure_is_an_install_error(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = 2
    meta["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "a", "1": "b"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"network_def\.in_channels is 1|fails on a \(1, 2"):
        install_models(bundle, tmp_path / "models")


def test_what_the_service_cannot_run_is_refused_at_install_even_when_trusted(tmp_path: Path) -> None:
    trusted = InstallOptions(trust_code=True)
    bundle = write_unet_bundle(tmp_path / "not_an_evaluator")
    _edit(bundle, evaluator={"_target_": "SimpleInferer"})
    with pytest.raises(BundleError, match=r"evaluator#_target_: SimpleInferer is a \w+, not a Supervised"):
        install_models(bundle, tmp_path / "models", options=trusted)
    needs_label = write_unet_bundle(tmp_path / "needs_label")
    config = json.loads((needs_label / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"][0]["keys"] = ["image", "label"]
    config["preprocessing"]["transforms"].insert(1, {"_target_": "EnsureChannelFirstd", "keys": ["label"]})
    (needs_label / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(
        BundleError, match=r"LoadImaged keys \['image', 'label'\].*uses it in preprocessing#transforms#1#keys"
    ):
        install_models(needs_label, tmp_path / "models", options=trusted)


# A SupervisedEvaluator of the bundle's own that negates the logits its inferer gives: with two softmax
# channels the argmax swaps, so its labels are 1 - those of MONAI's plain SupervisedEvaluator (but for ties).
_NEGATING_EVALUATOR = """
from monai.engines import SupervisedEvaluator


class Negating(SupervisedEvaluator):
    def __init__(self, *args, inferer, **kwargs):
        super().__init__(*args, inferer=lambda x, net, *a, **k: -inferer(x, net, *a, **k), **kwargs)
"""


def test_a_bundle_with_its_own_evaluator_is_run_by_that_evaluator(tmp_path: Path) -> None:
    from models.bundle.predictor import run_case, write_inputs
    from segserve.imaging.volume import Volume

    plain = write_unet_bundle(tmp_path / "plain", roi_size=(32, 32, 16), seed=3)
    own = write_unet_bundle(tmp_path / "own", roi_size=(32, 32, 16), seed=3)
    (own / "scripts").mkdir()
    (own / "scripts" / "__init__.py").write_text("")
    (own / "scripts" / "evaluator.py").write_text(_NEGATING_EVALUATOR)
    evaluator = {
        "_target_": "scripts.evaluator.Negating",
        "device": "@device",
        "val_data_loader": "$[]",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
    }
    _edit(own, evaluator=evaluator)
    with pytest.raises(BundleError, match=r"evaluator#_target_: scripts\.evaluator\.Negating"):
        install_models(own, tmp_path / "models")  # its evaluator is code: trust first
    checked = check_bundle(own, trust_code=True)  # one synthetic case through its evaluator
    assert checked["out_channels"] is None and checked["labels"] == {"0": "background", "1": "spleen"}

    rng = np.random.default_rng(0)
    scan = Volume(rng.normal(0, 200, (40, 36, 20)).astype(np.float32), np.diag([1.5, 1.5, 2.0, 1.0]), "nifti")
    paths = write_inputs([scan], tmp_path)
    base = build(plain)
    base.label_path = False  # MONAI's inferer and post-processing, as SupervisedEvaluator runs them
    expected = run_case(base, paths, torch.device("cpu"))
    pipeline = build(own, trusted=True)
    assert pipeline.evaluator is not None and not pipeline.label_path
    for _ in range(2):  # the evaluator is reused case after case
        got = run_case(pipeline, paths, torch.device("cpu"))
        assert pipeline.last_path == "evaluator" and got.shape == expected.shape
        assert 0.0 < float(expected.float().mean()) < 1.0
        assert float((got == 1 - expected).float().mean()) > 0.999
