"""Zoo conformance of the bundles that take well under a minute each (tests/support/zoo_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.stack import Stack
from tests.support.zoo_conformance import LIGHT, check_bundle, param

pytestmark = [pytest.mark.e2e, pytest.mark.zoo]


@pytest.mark.parametrize("name", [param(n) for n in LIGHT])
def test_service_agrees_with_monai_runner(name: str, stack: Stack, tmp_path: Path) -> None:
    check_bundle(name, stack, tmp_path)
