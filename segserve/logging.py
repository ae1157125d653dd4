"""Logging setup shared by the API, the workers and the CLI. Log records carry job ids and key ids,
never patient names or IDs: nothing here formats DICOM attributes."""

from __future__ import annotations

import logging

_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_segserve", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._segserve = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
