"""Which parts of a bundle config the service evaluates, and which of them would run the bundle's own code.

Torch-free: plain JSON/YAML values in, findings out (the MONAI component lookup is passed in by the
caller, see :func:`models.bundle.build.monai_component_module`).

What the service evaluates (the *used* part of a config):
    network_def (or network when there is no network_def), preprocessing, inferer, postprocessing (its
    SaveImaged steps removed: the service returns the label map instead of writing it), the evaluator
    when it is not MONAI's plain SupervisedEvaluator (the bundle's own, run as it is), the weights
    loader's ``load_path`` (a top-level or ``handlers`` CheckpointLoader), and, depth first, every
    top-level entry those refer to with ``@id``. A referenced top-level entry is taken whole, because
    MONAI's parser registers (and evaluates the import statements of) everything in what it is given.

What needs code execution (``--trust-code`` at install), in the order met:
    * a ``$`` expression, other than a plain string join ``$@a + '/x'`` of plain references and literals
      (evaluated here without ``eval``, see :func:`join_value`),
    * a ``_target_`` outside MONAI's transforms/networks/inferers/data (``scripts.x.MergeClassesd``,
      ``os.system``, ``monai.utils.run_cmd``), or one MONAI does not have,
    * an ``imports`` entry of a module other than inert ones (stdlib names, numpy, torch, monai, pandas),
      which MONAI evaluates before anything else; inert imports of a declarative bundle are never evaluated
      (it is parsed without them),
    * a ``%`` macro that reads another file.
What can never be honoured, trusted or not: ``_mode_: debug`` (a debugger on a worker).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Short ``_target_`` names are looked up by MONAI among its modules; these are safe to instantiate
# without trust (data transforms, network layers, inferers, datasets). Everything else needs trust.
SAFE_MODULES = ("monai.transforms.", "monai.networks.", "monai.inferers.", "monai.data.")
SAFE_APP_TRANSFORMS = re.compile(r"^monai\.apps\.[a-z_.]+\.transforms$")
ROOTS = ("network_def", "preprocessing", "inferer", "postprocessing")
_REF = re.compile(r"@((?:#|::)*[\w]+(?:(?:#|::)[\w]+)*)")
_JOIN_PART = re.compile(r"\s*(?:@([\w]+(?:(?:#|::)[\w]+)*)|'([^'\\]*)'|\"([^\"\\]*)\")\s*")

INERT_IMPORTS = frozenset(
    {"glob", "os", "json", "math", "numpy", "torch", "monai", "pandas", "pathlib", "re"}
)
_IMPORT = re.compile(r"\$\s*(?:import\s+([\w.]+)(?:\s+as\s+\w+)?|from\s+([\w.]+)\s+import\s+[\w, ]+)")

ComponentLookup = Callable[[str], str | None]


@dataclass(frozen=True)
class Finding:
    """One element of the used config that runs code (or cannot be honoured).

    ``where`` is its id with ``#`` separators (``postprocessing#transforms#3#func``), ``value`` the raw
    value (shortened), ``why`` the reason; ``fatal`` when even trust cannot make it work.
    """

    where: str
    value: str
    why: str
    fatal: bool = False

    def message(self) -> str:
        return f"{self.where}: {self.value} ({self.why})"


def split_id(ref: str) -> list[str]:
    """``a::b#0`` -> ["a", "b", "0"] (MONAI's ``::`` and its older ``#`` separators)."""
    return [p for p in re.split(r"::|#", ref) if p != ""]


def lookup(config: Any, parts: list[str]) -> Any:
    """The value at ``parts`` inside ``config``; KeyError when there is none."""
    node = config
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError("#".join(parts))
    return node


def short_target(target: object) -> str:
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else ""


def without_saving(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose postprocessing has no SaveImaged steps (the service returns the labels;
    SaveImaged hands its input on unchanged, so nothing else changes)."""
    out = copy.deepcopy(config)
    post = out.get("postprocessing")
    items = post.get("transforms") if isinstance(post, dict) else post
    if isinstance(items, list):
        items[:] = [
            t
            for t in items
            if not (isinstance(t, dict) and short_target(t.get("_target_")) in ("SaveImaged", "SaveImage"))
        ]
    return out


def label_readers(config: dict[str, Any]) -> list[str]:
    """Where the used steps read the ``label`` key, besides the preprocessing's LoadImaged: its other
    transforms, the inferer and the postprocessing (SaveImaged already left out by :func:`without_saving`).

    A config whose LoadImaged loads a ``label`` (a reference segmentation) that nothing else reads computes a
    prediction that does not depend on it; any other reader (a crop around the label, a label-driven
    sampler) would make the prediction depend on a file a job does not have. Returns the element paths
    (``preprocessing#transforms#3#keys``), [] when only LoadImaged reads it; a section whose shape is not a
    plain list of transforms counts as a reader.
    """

    def reads(value: Any) -> bool:
        if isinstance(value, str):
            target = config.get(value[1:]) if value.startswith("@") else value
            return isinstance(target, str) and (target == "label" or target.startswith("label_"))
        if isinstance(value, list):
            return any(reads(v) for v in value)
        return False

    found: list[str] = []
    for section in ("preprocessing", "inferer", "postprocessing"):
        value = config.get(section)
        items = value.get("transforms") if isinstance(value, dict) and section != "inferer" else None
        if section == "inferer":
            items = [value] if isinstance(value, dict) else None
        if not isinstance(items, list):
            found.append(section)
            continue
        prefix = section if section == "inferer" else f"{section}#transforms"
        for index, step in enumerate(items):
            if not isinstance(step, dict):
                found.append(f"{prefix}#{index}")
                continue
            if section == "preprocessing" and short_target(step.get("_target_")) == "LoadImaged":
                continue
            where = prefix if section == "inferer" else f"{prefix}#{index}"
            found += [
                f"{where}#{key}" for key, item in step.items() if not key.startswith("_") and reads(item)
            ]
    return found


def weights_loader(config: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The id and config of the CheckpointLoader that loads the weights (top level or in ``handlers``)."""
    for key, value in config.items():
        candidates = [(key, value)] if isinstance(value, dict) else []
        if isinstance(value, list):
            candidates = [(f"{key}#{i}", v) for i, v in enumerate(value) if isinstance(v, dict)]
        for where, item in candidates:
            if short_target(item.get("_target_")) == "CheckpointLoader":
                return where, item
    return None


def join_value(text: str, config: dict[str, Any], overrides: dict[str, Any], depth: int = 0) -> str | None:
    """The value of ``$@a + '/models/' + @b`` when every part is a plain string (no code), else None."""
    body = text.strip()
    if not body.startswith("$"):
        return None
    pieces: list[str] = []
    for part in body[1:].split("+"):
        match = _JOIN_PART.fullmatch(part)
        if match is None:
            return None
        ref, single, double = match.groups()
        if ref is None:
            pieces.append(single if single is not None else double)
            continue
        parts = split_id(ref)
        try:
            value = overrides[ref] if ref in overrides else lookup(config, parts)
        except KeyError:
            return None
        if isinstance(value, str) and value.startswith("$") and depth < 8:
            value = join_value(value, config, overrides, depth + 1)  # "$@checkpoint" -> its own join
        if not isinstance(value, str) or value.startswith(("$", "@", "%")):
            return None
        pieces.append(value)
    return "".join(pieces)


def _shorten(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _target_finding(target: object, where: str, component: ComponentLookup) -> Finding | None:
    if not isinstance(target, str):
        return Finding(f"{where}#_target_", _shorten(target), "a _target_ that is not a name")
    if target.startswith(("$", "@", "%")):
        return Finding(f"{where}#_target_", _shorten(target), "a computed _target_ runs code")
    module = target.rsplit(".", 1)[0] + "." if "." in target else component(target)
    if module is None:
        return Finding(
            f"{where}#_target_",
            target,
            "not a MONAI component: it would import code from outside MONAI (scripts/ or another package)",
        )
    module = module.rstrip(".") + "."
    if module.startswith(SAFE_MODULES) or SAFE_APP_TRANSFORMS.fullmatch(module.rstrip(".")):
        return None
    origin = (
        "outside MONAI"
        if not module.startswith("monai.")
        else f"in {module.rstrip('.')}, not a MONAI transform, network, inferer or dataset"
    )
    return Finding(f"{where}#_target_", target, f"a component {origin} runs code")


class _Scanner:
    def __init__(self, config: dict[str, Any], component: ComponentLookup, overrides: dict[str, Any]) -> None:
        self.config = config
        self.component = component
        self.overrides = overrides
        self.seen: set[str] = set()
        self.used: list[str] = []

    def entry(self, key: str) -> Iterator[Finding]:
        if key in self.seen or key in self.overrides:
            return
        self.seen.add(key)
        if key not in self.config:
            yield Finding(key, "(missing)", f"@{key} is referred to but not defined", fatal=True)
            return
        self.used.append(key)
        yield from self.value(self.config[key], key)

    def value(self, value: Any, where: str) -> Iterator[Finding]:
        if isinstance(value, dict):
            if "_target_" in value:
                finding = _target_finding(value["_target_"], where, self.component)
                if finding is not None:
                    yield finding
            if value.get("_mode_") == "debug":
                yield Finding(f"{where}#_mode_", "debug", "runs a debugger; cannot be honoured", fatal=True)
            for key, item in value.items():
                if key != "_target_":
                    yield from self.value(item, f"{where}#{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from self.value(item, f"{where}#{index}")
        elif isinstance(value, str):
            text = value.strip()
            if text.startswith("$"):
                if join_value(text, self.config, self.overrides) is None:
                    yield Finding(where, _shorten(text), "a $ expression runs Python")
            elif text.startswith("%"):
                if re.search(r"\.(json|yaml|yml)(::|#|$)", text[1:]):
                    yield Finding(where, _shorten(text), "a macro reading another file")
                elif split_id(text[1:]):  # a same-file macro copies that entry in: scan it
                    yield from self.entry(split_id(text[1:])[0])
            for ref in _REF.findall(text):
                if ref.startswith(("#", ":")):
                    continue  # relative ids stay inside the entry being scanned
                yield from self.entry(split_id(ref)[0])


def _import_findings(imports: Any) -> Iterator[Finding]:
    """Imports of modules other than the inert ones (names for expressions, no effect on MONAI: the stdlib
    modules below, numpy, torch, monai, pandas); a declarative bundle's inert imports are not evaluated."""
    if imports is None:
        return
    if not isinstance(imports, list):
        yield Finding("imports", _shorten(imports), "imports must be a list of $import statements")
        return
    for index, statement in enumerate(imports):
        match = _IMPORT.fullmatch(statement.strip()) if isinstance(statement, str) else None
        module = match.group(1) or match.group(2) if match else None
        if module is None or module.split(".")[0] not in INERT_IMPORTS:
            yield Finding(f"imports#{index}", _shorten(statement), "imports code from outside MONAI")


@dataclass(frozen=True)
class Scan:
    """The findings of a config, in the order met, and the top-level ids the service evaluates."""

    findings: tuple[Finding, ...]
    used: tuple[str, ...]
    network_root: str

    @property
    def executes_code(self) -> bool:
        return bool(self.findings)

    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None


def own_evaluator(config: dict[str, Any]) -> str | None:
    """The ``evaluator#_target_`` of a bundle that runs cases with an evaluator of its own (VISTA-3D's
    ``scripts.evaluator.Vista3dEvaluator`` builds its prompts); None for MONAI's SupervisedEvaluator or
    no evaluator."""
    evaluator = config.get("evaluator")
    target = evaluator.get("_target_") if isinstance(evaluator, dict) else None
    if target is None or short_target(target) == "SupervisedEvaluator":
        return None
    return target if isinstance(target, str) else repr(target)


def scan_config(
    config: dict[str, Any], component: ComponentLookup, overrides: dict[str, Any] | None = None
) -> Scan:
    """Scan the used part of ``config`` (SaveImaged already removed, see :func:`without_saving`).

    ``overrides``: top-level ids the service sets itself (bundle_root, device, ...); never scanned.
    """
    overrides = overrides or {}
    scanner = _Scanner(config, component, overrides)
    network_root = "network_def" if "network_def" in config else "network"
    findings: list[Finding] = list(_import_findings(config.get("imports")))
    roots = (network_root, *ROOTS[1:], *(("evaluator",) if own_evaluator(config) else ()))
    for root in roots:
        if root in config:
            findings += scanner.entry(root)
    loader = weights_loader(config)
    if loader is not None:
        where, item = loader
        for key in ("load_path", "map_location"):
            if key in item:
                findings += scanner.value(item[key], f"{where}#{key}")
    used = tuple(dict.fromkeys(scanner.used))
    return Scan(findings=tuple(findings), used=used, network_root=network_root)
