"""A generic task with free-text labels, for datasets that fit no specific task.

Rows need an input (`input`, `question` or `text`) and, when labeled, a label (`label`,
`answer` or `output`); labels compare after lower-casing and collapsing whitespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsbs.tasks.base import (
    Exemplar,
    Parsed,
    collapse,
    optional_label,
    required_text,
    split_answer,
)

EXEMPLARS = (
    Exemplar(
        "What is the capital of France?",
        "France's government sits in Paris, its largest city.",
        "Paris",
    ),
    Exemplar(
        "Which is heavier, a kilogram of iron or a gram of feathers?",
        "A kilogram is a thousand grams, so the kilogram of iron weighs more.",
        "a kilogram of iron",
    ),
    Exemplar(
        "What color do you get by mixing blue and yellow paint?",
        "Blue and yellow are primary colors of paint, and together they make green.",
        "green",
    ),
    Exemplar(
        "How many legs does a spider have?",
        "Spiders are arachnids, and arachnids have eight legs.",
        "eight",
    ),
)


class FreeLabelTask:
    """Input text -> short free-text label; exact match after normalisation."""

    exemplars: tuple[Exemplar, ...] = EXEMPLARS

    def __init__(self, name: str = "free") -> None:
        self.name = name

    def build_input(self, row: Mapping[str, Any]) -> str:
        """The input text."""
        return required_text(row, "input", "question", "text")

    def gold_label(self, row: Mapping[str, Any]) -> str | None:
        """The label text, normalised; None when unlabeled."""
        return optional_label(row, ("label", "answer", "output"), self.normalize)

    def row_meta(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Free rows carry no extras."""
        return {}

    def parse(self, text: str, input_text: str) -> Parsed:
        """The answer sentence's text as label."""
        rationale, answer = split_answer(text)
        return Parsed(rationale, self.normalize(answer) if answer else None)

    def normalize(self, label: str) -> str | None:
        """Lower case, single spaces, no surrounding punctuation; None if nothing is left."""
        return collapse(label) or None

    def is_correct(self, predicted: str | None, gold: str | None) -> bool:
        """Exact match after normalisation."""
        if predicted is None or gold is None:
            return False
        return collapse(predicted) == collapse(gold)
