"""The interactive engines by name, for the session API and workers: ``get_engine("classical")``.

Engines that need weights (DeepEdit, nnInteractive) register here beside the classical one, which needs
none and is always available.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from models.interactive.classical import ClassicalEngine
from models.interactive.engine import InteractiveEngine


def classical_engine() -> ClassicalEngine:
    """The classical engine with its default (benchmarked) parameters."""
    return ClassicalEngine()


ENGINES: dict[str, Callable[[], InteractiveEngine]] = {"classical": classical_engine}


def engine_names(models_dir: Path | None = None) -> list[str]:
    """The names :func:`get_engine` accepts: the weightless engines, sorted, then the model engines whose
    weights are installed in ``models_dir`` (models.interactive.model_engines; cheap, no torch import)."""
    names = sorted(ENGINES)
    if models_dir is not None:
        from models.interactive.model_engines import available_model_engines

        names += available_model_engines(Path(models_dir))
    return names


def is_engine_name(name: str, models_dir: Path | None = None) -> bool:
    """Whether ``name`` is offered: one of :func:`engine_names`, or ``deepedit:<model id>:<label>`` for a
    label of an offered DeepEdit bundle."""
    names = engine_names(models_dir)
    return name in names or (name.count(":") == 2 and name.rsplit(":", 1)[0] in names)


def get_engine(name: str, models_dir: Path | None = None, device: str = "cpu") -> InteractiveEngine:
    """A new engine of that name (a model engine with its weights loaded from ``models_dir``); ``KeyError``
    naming the known ones for any other name, ``ModelUnavailable`` when a model engine's weights are not."""
    if name in ENGINES:
        return ENGINES[name]()
    if models_dir is not None:
        from models.interactive.model_engines import model_engine

        with contextlib.suppress(KeyError):
            return model_engine(name, Path(models_dir), device)
    known = ", ".join(engine_names(models_dir))
    raise KeyError(f"unknown interactive engine {name!r}; known: {known}")
