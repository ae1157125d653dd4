"""The interactive engines by name, for the session API and workers: ``get_engine("classical")``.

Engines that need weights (DeepEdit, nnInteractive) register here beside the classical one, which needs
none and is always available.
"""

from __future__ import annotations

from collections.abc import Callable

from models.interactive.classical import ClassicalEngine
from models.interactive.engine import InteractiveEngine


def classical_engine() -> ClassicalEngine:
    """The classical engine with its default (benchmarked) parameters."""
    return ClassicalEngine()


ENGINES: dict[str, Callable[[], InteractiveEngine]] = {"classical": classical_engine}


def engine_names() -> list[str]:
    """The names :func:`get_engine` accepts, sorted."""
    return sorted(ENGINES)


def get_engine(name: str) -> InteractiveEngine:
    """A new engine of that name; ``KeyError`` naming the known ones for any other name."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise KeyError(f"unknown interactive engine {name!r}; known: {', '.join(engine_names())}") from None
    return factory()
