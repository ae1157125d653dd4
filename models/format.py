"""What an installable model format is (:class:`ModelFormat`) and what an admin decides at install
(:class:`InstallOptions`). The list of formats is :func:`models.formats.formats`.

Torch-free (the web service imports the catalog). Each format says where its installed models live under a
models directory, how to recognise and install a source folder, how to read the cards of what is installed,
and which class predicts with it (imported only when a worker loads a model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.card import ModelCard


@dataclass(frozen=True)
class InstallOptions:
    """What an admin decides at install time.

    Attributes:
        trust_code: the model may run code of its own (bundle ``$`` expressions, ``scripts/``).
        folds: nnU-Net folds to use: fold numbers, or "all" for ``fold_all`` (None: every numbered fold with
            a final checkpoint, as nnU-Net's own prediction picks them).
        installed_by: who installed it (recorded in the manifest and the audit log).
        lesion_labels: label values the admin marks as lesions (abnormalities); recorded in the manifest,
            checked against the model's labels.
    """

    trust_code: bool = False
    folds: tuple[int | str, ...] | None = None
    installed_by: str = ""
    lesion_labels: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFormat:
    """One installable model format.

    Attributes:
        name: the cards' ``params["weights_format"]`` (e.g. "monai-bundle").
        folder: where installed models of this format live under a models directory.
        watched: files inside each installed model whose change makes the catalog re-read the cards.
        find: the models of this format at or directly under a source path (``[]`` when none).
        install: install one source model into a models directory; returns the installed relative paths.
        cards: the cards of the installed models (unreadable ones as never-available cards, with the reason).
        predictor: ``"module:Class"`` of the predictor; the class has ``load(card, models_dir, device)``.
    """

    name: str
    folder: str
    watched: tuple[str, ...]
    find: Callable[[Path], list[Path]]
    install: Callable[[Path, Path, InstallOptions], list[str]]
    cards: Callable[[Path], list[ModelCard]]
    predictor: str

    def predictor_class(self) -> Any:
        """The predictor class (imports its module, and with it torch)."""
        module, _, name = self.predictor.partition(":")
        return getattr(importlib.import_module(module), name)
