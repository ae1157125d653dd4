"""Lesion labels on model cards: read from a card's JSON, checked against the card's labels."""

from __future__ import annotations

from typing import Any

import pytest

from models.card import card_from_dict, check_lesion_labels


def _card(**extra: Any) -> dict[str, Any]:
    return {
        "id": "m",
        "version": "1",
        "name": "m",
        "description": "",
        "modality": "CT",
        "task": "segmentation",
        "architecture": "x",
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "colors": {},
        "input": {},
        "files": [],
        "licence": "",
        "citation": "",
        **extra,
    }


def test_card_without_lesion_labels_has_none() -> None:
    assert card_from_dict(_card()).lesion_labels == ()


def test_card_reads_lesion_labels_sorted() -> None:
    assert card_from_dict(_card(lesion_labels=[2])).lesion_labels == (2,)
    assert check_lesion_labels(["2", 1, 2], {1: "a", 2: "b"}) == (1, 2)


@pytest.mark.parametrize("bad", [[0], [3], [2, 7]])
def test_lesion_labels_outside_the_labels_are_refused_by_value(bad: list[int]) -> None:
    with pytest.raises(ValueError, match=r"lesion labels \[") as info:
        card_from_dict(_card(lesion_labels=bad))
    assert str([v for v in bad if v not in (1, 2)]) in str(info.value)
