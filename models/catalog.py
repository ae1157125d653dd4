"""The model catalog: built-in cards plus the models installed under a models directory, with availability.

Imported by the web service, so it must stay light: no torch, no numpy. Built-in cards live as JSON files
in ``models/cards/`` (package data); installed models (MONAI bundles, ...) are found through
:mod:`models.formats`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.card import ModelCard, card_from_dict, check_card
from models.formats import formats

CARDS_DIR = Path(__file__).resolve().parent / "cards"


@dataclass(frozen=True)
class ModelStatus:
    """A card plus whether its files are present and intact in a models directory."""

    card: ModelCard
    available: bool
    reason: str | None


def builtin_cards() -> list[ModelCard]:
    """The cards shipped in ``models/cards/*.json``, sorted by id."""
    paths = sorted(CARDS_DIR.glob("*.json"))
    cards = [card_from_dict(json.loads(p.read_text(encoding="utf-8"))) for p in paths]
    return sorted(cards, key=lambda c: c.id)


class Catalog:
    """The models this deployment knows about, checked against one models directory.

    Without explicit ``cards`` it holds the built-in cards plus one card per model installed under the
    models directory in any format of :func:`models.formats.formats` (MONAI bundles under ``bundles/``, ...).
    Installed models are re-read when a format's folder or one of an installed model's watched files
    changes (one stat each per call), so a long-lived catalog (the API's) sees a model installed after it
    started. An installed model whose id clashes with a built-in card, or with an earlier format's, is
    ignored.
    """

    def __init__(
        self, models_dir: Path, cards: Sequence[ModelCard] | None = None, *, bundles: bool | None = None
    ) -> None:
        """``bundles``: whether to list installed models (default: only when ``cards`` is not given)."""
        self.models_dir = Path(models_dir)
        chosen = builtin_cards() if cards is None else list(cards)
        self._fixed: dict[str, ModelCard] = {}
        for card in chosen:
            if card.id in self._fixed:
                raise ValueError(f"duplicate model card id {card.id!r}")
            self._fixed[card.id] = card
        self._installed_enabled = cards is None if bundles is None else bundles
        self._installed_cards: dict[str, ModelCard] = {}
        self._installed_signature: tuple[object, ...] | None = None
        self._lock = threading.Lock()

    def _signature(self) -> tuple[object, ...]:
        signature: list[object] = []
        for fmt in formats():
            root = self.models_dir / fmt.folder
            try:
                entries = sorted(os.scandir(root), key=lambda e: e.name)
                signature.append((fmt.folder, root.stat().st_mtime_ns))
            except OSError:
                continue
            for entry in entries:
                for name in fmt.watched:
                    try:
                        st = os.stat(os.path.join(entry.path, name))
                        signature.append((fmt.folder, entry.name, name, st.st_size, st.st_mtime_ns))
                    except OSError:
                        signature.append((fmt.folder, entry.name, name))
        return tuple(signature)

    @property
    def _cards(self) -> dict[str, ModelCard]:
        if not self._installed_enabled:
            return self._fixed
        signature = self._signature()
        with self._lock:
            if signature != self._installed_signature:
                found: dict[str, ModelCard] = {}
                for fmt in formats():
                    for card in fmt.cards(self.models_dir):
                        if card.id not in self._fixed and card.id not in found:
                            found[card.id] = card
                self._installed_cards, self._installed_signature = found, signature
            return {**self._fixed, **self._installed_cards}

    def ids(self) -> list[str]:
        return list(self._cards)

    def card(self, model_id: str) -> ModelCard:
        """The card for ``model_id``; KeyError if there is none."""
        cards = self._cards
        try:
            return cards[model_id]
        except KeyError:
            raise KeyError(f"unknown model id {model_id!r}; known: {list(cards)}") from None

    def status(self, model_id: str) -> ModelStatus:
        card = self.card(model_id)
        reason = check_card(card, self.models_dir)
        return ModelStatus(card=card, available=reason is None, reason=reason)

    def statuses(self) -> list[ModelStatus]:
        return [self.status(model_id) for model_id in self._cards]


def card_to_public(status: ModelStatus) -> dict[str, object]:
    """JSON-able view of a card and its availability (no local filesystem paths)."""
    card = status.card
    return {
        "id": card.id,
        "version": card.version,
        "name": card.name,
        "description": card.description,
        "modality": card.modality,
        "task": card.task,
        "architecture": card.architecture,
        "labels": {str(k): v for k, v in sorted(card.labels.items())},
        "colors": {str(k): list(v) for k, v in sorted(card.colors.items())},
        "lesion_labels": list(card.lesion_labels),
        "input": json.loads(json.dumps(card.input)),
        "files": [{"path": w.path, "sha256": w.sha256, "source_url": w.source_url} for w in card.files],
        "licence": card.licence,
        "citation": card.citation,
        "executes_code": bool(card.params.get("executes_code", False)),
        # Models pulled from public releases (TotalSegmentator) name their sources before they are installed.
        "sources": [
            {k: part.get(k) for k in ("url", "release", "sha256")}
            for part in card.params.get("parts", [])  # type: ignore[attr-defined]
            if isinstance(part, dict) and part.get("url")
        ],
        "available": status.available,
        "unavailable_reason": status.reason,
    }
