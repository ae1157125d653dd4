"""The house rule, as data and one function: which package may import which, and no import cycles.

Layers, top to bottom (a module may import its own package and any package in a lower layer):

    shell                the command line and `up`: may import everything
    service              HTTP: validates, stores, enqueues (publishes through workers.celery_app)
    workers              Celery tasks: take a job id, call models/ and evaluation/
    models | evaluation  libraries: models (catalog, formats, predictors), evaluation (metrics); side by side,
                         neither imports the other
    segserve             the foundation: config, database, jobs, storage, audit, broker, and three rooms,
                         each above the next: segserve.scans > segserve.dicom > segserve.imaging

Imports are read from the source (``import``/``from`` anywhere in a module, functions and TYPE_CHECKING
blocks included), so a lazy import cannot hide a wrong direction.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

LAYERS: dict[str, int] = {"shell": 4, "service": 3, "workers": 2, "models": 1, "evaluation": 1, "segserve": 0}
# Rooms inside the foundation, lowest first: a room may not import a room above it.
FOUNDATION_ROOMS = ("segserve.imaging", "segserve.dicom", "segserve.scans")


def module_imports(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module name -> the project modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    sources: dict[str, str] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            sources[name.removesuffix(".__init__")] = path.read_text(encoding="utf-8")
    graph: dict[str, set[str]] = {}
    for name, source in sources.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in found if m in sources and m != name}
    return graph


def _rank(module: str) -> tuple[str, int]:
    top = module.split(".")[0]
    return top, LAYERS[top]


def _room(module: str) -> int | None:
    for index, room in enumerate(FOUNDATION_ROOMS):
        if module == room or module.startswith(room + "."):
            return index
    return None


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, across the side-by-side libraries, or up a foundation room."""
    problems = []
    for module, imported in sorted(graph.items()):
        top, rank = _rank(module)
        for target in sorted(imported):
            target_top, target_rank = _rank(target)
            if target_top == top:
                room, target_room = _room(module), _room(target)
                if target_room is not None and (room is None or target_room > room):
                    problems.append(f"{module} imports {target}: a higher room of the foundation")
            elif target_rank >= rank:
                problems.append(f"{module} imports {target}: {target_top} is not below {top}")
    return problems


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted; [] when acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)
