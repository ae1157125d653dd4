"""The interactive engines that need installed weights, for the session API to offer: DeepEdit bundles and
nnInteractive.

Names:
    ``deepedit:<model id>``   an installed MONAI bundle whose inference config uses DeepEdit's click guidance
                              (models.interactive.deepedit), available when its card is (files intact, and
                              trusted at install when it runs code, as the Zoo's DeepEdit bundle does);
                              ``deepedit:<model id>:<label>`` for one label of a bundle with several
    ``nninteractive``         the newest nnInteractive model folder under ``<models_dir>/nninteractive/``
                              when the nninteractive package is installed (models.interactive.nninteractive)

:func:`available_model_engines` is cheap and torch-free (reads cards, configs as data, folder listings);
:func:`model_engine` loads the weights (seconds) and imports torch: workers only. The classical engine, which
needs no weights, is registered separately (models/interactive/engines.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from models.card import ModelUnavailable
from models.interactive.engine import InteractiveEngine

DEEPEDIT = "deepedit"
NNINTERACTIVE = "nninteractive"
GUIDANCE_FROM_POINTS = "AddGuidanceFromPointsDeepEditd"  # MONAI's transform that reads DeepEdit's clicks


def is_deepedit_config(config: Any) -> bool:
    """Whether a bundle config (plain data, never evaluated) uses DeepEdit's click guidance."""
    if isinstance(config, dict):
        return any(is_deepedit_config(v) for v in config.values())
    if isinstance(config, list):
        return any(is_deepedit_config(v) for v in config)
    return isinstance(config, str) and config.rsplit(".", 1)[-1] == GUIDANCE_FROM_POINTS


def _deepedit_cards(models_dir: Path) -> dict[str, Any]:
    """Available bundle cards whose config is DeepEdit's, by model id."""
    from models.bundle.config import load_config
    from models.bundle.install import bundle_cards
    from models.card import check_card

    found: dict[str, Any] = {}
    for card in bundle_cards(models_dir):
        if card.params.get("unavailable_reason") or check_card(card, models_dir) is not None:
            continue
        directory = Path(models_dir) / str(card.params["bundle_dir"])
        config = str(card.input.get("config") or "configs/inference.json")
        try:
            if is_deepedit_config(load_config(directory / config)):
                found[card.id] = card
        except (OSError, ValueError):
            continue
    return found


def available_model_engines(models_dir: Path) -> list[str]:
    """Names of the model engines usable with ``models_dir`` now, sorted (see the module docstring)."""
    from models.interactive.nninteractive import model_folders

    names = [f"{DEEPEDIT}:{model_id}" for model_id in _deepedit_cards(models_dir)]
    if importlib.util.find_spec("nnInteractive") is not None and model_folders(models_dir):
        names.append(NNINTERACTIVE)
    return sorted(names)


def model_engine(name: str, models_dir: Path, device: str = "cpu") -> InteractiveEngine:
    """The engine ``name`` with its weights loaded.

    Raises:
        KeyError: not a model engine name.
        ModelUnavailable: the weights, the bundle's trust, a label or the package are missing (named).
    """
    kind, _, rest = name.partition(":")
    if kind == NNINTERACTIVE and not rest:
        from models.interactive.nninteractive import NNInteractiveEngine

        return NNInteractiveEngine.from_models_dir(models_dir, device)
    if kind == DEEPEDIT and rest:
        from models.interactive.deepedit import DeepEditEngine

        model_id, _, label = rest.partition(":")
        card = _deepedit_cards(models_dir).get(model_id)
        if card is None:
            raise ModelUnavailable(
                f"no available DeepEdit bundle {model_id!r} in {models_dir} (install it with "
                "'segserve models install PATH --trust-code')"
            )
        return DeepEditEngine.load(card, models_dir, label or None, device)
    raise KeyError(f"unknown model engine {name!r}: 'deepedit:<model id>[:<label>]' or 'nninteractive'")
