"""A model with a lesion label for end-to-end tests: a seeded UNet bundle (models/testing/make_bundle.py)
whose label 1 is marked as a lesion at install time (``segserve models install --lesion-labels 1``)."""

from __future__ import annotations

from pathlib import Path

from models.testing.make_bundle import write_unet_bundle
from tests.support.paths import DATA
from tests.support.stack import Stack

LESION_MODEL = "lesion_ct_test_bundle"
SPLEEN = DATA / "ct" / "spleen"
# A real CT (164 x 166 x 26) and its manual spleen mask, standing in for a scan and its lesion reference
LESION_CASE = (SPLEEN / "sub-spleen2_ct.nii.gz", SPLEEN / "sub-spleen2_ct_seg-manual.nii.gz")


def install_lesion_model(stack: Stack, directory: Path) -> str:
    """Write and install the bundle into ``stack``; returns its model id. A random network finds hundreds
    of specks on a CT, so the bundle keeps its largest component (one lesion)."""
    bundle = write_unet_bundle(
        directory / LESION_MODEL,
        labels={0: "background", 1: "lesion"},
        seed=3,
        largest_component=[1],
    )
    refused = stack.cli("models", "install", str(bundle), "--lesion-labels", "2", check=False)
    assert refused.returncode == 2 and "lesion labels [2]" in refused.stderr
    stack.cli("models", "install", str(bundle), "--lesion-labels", "1")
    return LESION_MODEL
