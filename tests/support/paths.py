"""Where the shared real data and weights are: `<repo>/../shared` (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
WEIGHTS = SHARED / "models"


def require_shared() -> None:
    if not DATA.is_dir() or not WEIGHTS.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set SEGSERVE_SHARED_DIR)")
