"""The installable model formats, one room of ``models/`` each: the catalog and the installer find them here.

Built-in MeshNet cards are not a format here: they ship as JSON cards with pinned weight files (see
:mod:`models.catalog`).
"""

from __future__ import annotations

from models.format import InstallOptions, ModelFormat

__all__ = ["InstallOptions", "ModelFormat", "format_named", "formats"]


def formats() -> list[ModelFormat]:
    """Every installable format, in the order sources are tried at install."""
    from models.bundle.install import BUNDLE_FORMAT
    from models.nnunet.install import NNUNET_FORMAT
    from models.totalseg.tasks import TOTALSEG_FORMAT

    return [BUNDLE_FORMAT, NNUNET_FORMAT, TOTALSEG_FORMAT]


def format_named(name: str) -> ModelFormat | None:
    """The format whose cards carry ``weights_format == name``, or None."""
    return next((f for f in formats() if f.name == name), None)
