"""Natural language inference (ANLI round 1, e-SNLI): premise + hypothesis -> a label.

Labels are `entailment`, `neutral` or `contradiction`. Gold labels arrive as 0/1/2 (the
Hugging Face convention) or as words, and are always written as words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dsbs.tasks.base import Exemplar, Parsed, collapse, required_text, split_answer

LABELS = ("entailment", "neutral", "contradiction")

# Checked in order: "not possible to tell" must win over a bare "no".
_SYNONYMS = (
    (re.compile(r"\bentail"), "entailment"),
    (re.compile(r"\bcontradict"), "contradiction"),
    (
        re.compile(
            r"\bneutral\b|not possible to tell|cannot be determined|can't tell"
            r"|\bunknown\b|\bmaybe\b|\bundetermined\b"
        ),
        "neutral",
    ),
    (re.compile(r"^(?:yes|true)\b"), "entailment"),
    (re.compile(r"^(?:no|false)\b"), "contradiction"),
)


def format_pair(premise: str, hypothesis: str) -> str:
    """The student input for a premise and hypothesis."""
    return f"Premise: {premise}\nHypothesis: {hypothesis}"


EXEMPLARS = (
    Exemplar(
        format_pair("A man in a red jacket is climbing a snowy mountain.", "A person is outdoors."),
        "A man is a person, and someone climbing a snowy mountain is outside.",
        "entailment",
    ),
    Exemplar(
        format_pair(
            "Two children are playing soccer in a park.", "The children are asleep in bed."
        ),
        "Children who are playing soccer in a park cannot at the same time be asleep in bed.",
        "contradiction",
    ),
    Exemplar(
        format_pair(
            "A woman is reading a book on a bench.", "The woman is reading a mystery novel."
        ),
        "The premise does not say what kind of book she is reading, so it may or may not be a "
        "mystery novel.",
        "neutral",
    ),
    Exemplar(
        format_pair(
            "The Harbor Museum opened in 1998 and shows modern art from Europe.",
            "The Harbor Museum shows art.",
        ),
        "A museum that shows modern art from Europe shows art.",
        "entailment",
    ),
    Exemplar(
        format_pair(
            "The morning train to Boston was cancelled because of the storm.",
            "The morning train to Boston left on time.",
        ),
        "A cancelled train did not leave at all, so it cannot have left on time.",
        "contradiction",
    ),
    Exemplar(
        format_pair(
            "A chef is chopping vegetables in a busy kitchen.",
            "The chef is making soup for a wedding.",
        ),
        "Chopping vegetables could be for many dishes and events; nothing says it is soup or a "
        "wedding.",
        "neutral",
    ),
)


def nli_label(text: str) -> str | None:
    """The NLI label a text names (`Entailment.`, `it is not possible to tell`, `no`), or None."""
    words = collapse(text)
    for pattern, label in _SYNONYMS:
        if pattern.search(words):
            return label
    return None


class NliTask:
    """Premise/hypothesis pairs with three labels."""

    exemplars: tuple[Exemplar, ...] = EXEMPLARS

    def __init__(self, name: str) -> None:
        self.name = name

    def build_input(self, row: Mapping[str, Any]) -> str:
        """`Premise: ...` and `Hypothesis: ...` lines."""
        return format_pair(required_text(row, "premise"), required_text(row, "hypothesis"))

    def gold_label(self, row: Mapping[str, Any]) -> str | None:
        """The label word, from 0/1/2 or a word; None when absent or -1 (unlabeled in HF)."""
        value = row.get("label")
        if value is None or value == "" or value == -1 or value == "-1":
            return None
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            index = int(value)
            if 0 <= index < len(LABELS):
                return LABELS[index]
            raise ValueError(f"invalid field: label {value!r} (expected 0, 1 or 2)")
        label = self.normalize(str(value))
        if label is None:
            raise ValueError(f"invalid field: label {value!r} (expected an NLI label)")
        return label

    def row_meta(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """NLI rows carry no extras."""
        return {}

    def parse(self, text: str, input_text: str) -> Parsed:
        """`... So the answer is contradiction.` or `... Answer: entailment`."""
        rationale, answer = split_answer(text)
        return Parsed(rationale, nli_label(answer) if answer else None)

    def normalize(self, label: str) -> str | None:
        """One of LABELS, or None."""
        return nli_label(label)

    def is_correct(self, predicted: str | None, gold: str | None) -> bool:
        """Exact match of label words."""
        return predicted is not None and predicted == gold
