"""Multiple choice (CommonsenseQA): the question with lettered choices -> the choice text.

The label is the choice's text (`wooded area`), not its letter, so that predictions don't
depend on the order in which choices are shown.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from dsbs.tasks.base import Exemplar, Parsed, collapse, required_text, split_answer

CHOICES_HEADER = "Answer Choices:"
_CHOICE_LINE = re.compile(r"^\(([a-z])\) (.*)$", re.MULTILINE)
_LETTER = re.compile(r"\(([a-z])\)|^([a-z])(?:\)|\.|:|$)", re.IGNORECASE)


def format_choices(question: str, choices: Sequence[str]) -> str:
    """The student input: question, then `(a) ...` lines."""
    lines = [f"({string.ascii_lowercase[i]}) {choice}" for i, choice in enumerate(choices)]
    return "\n".join([question, CHOICES_HEADER, *lines])


def choices_of(input_text: str) -> list[str]:
    """The choices shown in an input built by `format_choices` (after its last header)."""
    _, _, block = input_text.rpartition(CHOICES_HEADER)
    return [text.strip() for _, text in _CHOICE_LINE.findall(block)]


def _letter_choice(answer: str, choices: Sequence[str]) -> str | None:
    match = _LETTER.search(answer.strip())
    if not match:
        return None
    index = string.ascii_lowercase.index((match.group(1) or match.group(2)).lower())
    return choices[index] if index < len(choices) else None


EXEMPLARS = (
    Exemplar(
        format_choices(
            "Where would you put a plate after washing and drying it?",
            ["restaurant", "cupboard", "dishwasher", "table", "floor"],
        ),
        "The answer must be a place where clean plates are kept. Of the above choices, only a "
        "cupboard is where clean plates are put away.",
        "(b) cupboard",
    ),
    Exemplar(
        format_choices(
            "What do people usually do when they feel very tired?",
            ["run", "shout", "eat", "sleep", "swim"],
        ),
        "The answer must be something that takes tiredness away. Of the above choices, only "
        "sleeping lets a tired person rest.",
        "(d) sleep",
    ),
    Exemplar(
        format_choices(
            "Where can you borrow many books for free?",
            ["library", "bookstore", "kitchen", "garden", "printer"],
        ),
        "The answer must be a place that lends books. Of the above choices, only a library "
        "lends books without charge; a bookstore sells them.",
        "(a) library",
    ),
    Exemplar(
        format_choices(
            "What happens to ice cubes left in the hot sun?",
            ["they freeze", "they grow", "they melt", "they sing", "they harden"],
        ),
        "The answer must be what heat does to ice. Of the above choices, only melting is what "
        "happens to ice when it gets warm.",
        "(c) they melt",
    ),
    Exemplar(
        format_choices(
            "What would someone use to cut a sheet of paper in half?",
            ["spoon", "pillow", "glue", "pencil", "scissors"],
        ),
        "The answer must be a tool that cuts. Of the above choices, only scissors are made "
        "for cutting paper.",
        "(e) scissors",
    ),
)


class MultipleChoiceTask:
    """Question with lettered choices; label is the chosen choice's text."""

    exemplars: tuple[Exemplar, ...] = EXEMPLARS

    def __init__(self, name: str = "cqa") -> None:
        self.name = name

    def _choices(self, row: Mapping[str, Any]) -> list[str]:
        choices = row.get("choices")
        if isinstance(choices, Mapping):  # Hugging Face commonsense_qa: {"label", "text"}
            choices = choices.get("text")
        if not isinstance(choices, Sequence) or isinstance(choices, str) or len(choices) < 2:
            raise ValueError("missing or invalid field: choices (a list of at least 2)")
        if any(not isinstance(c, str) or not c.strip() for c in choices):
            raise ValueError("invalid field: choices (every choice must be non-empty text)")
        return [c.strip() for c in choices]

    def build_input(self, row: Mapping[str, Any]) -> str:
        """The question and its lettered choices."""
        return format_choices(required_text(row, "question"), self._choices(row))

    def gold_label(self, row: Mapping[str, Any]) -> str | None:
        """The answer's text: `answer`, or the choice named by HF's `answerKey` letter."""
        answer = row.get("answer")
        if isinstance(answer, str) and answer.strip():
            return self.normalize(answer)
        key = row.get("answerKey")
        if isinstance(key, str) and key.strip():
            return _letter_choice(f"({key.strip().lower()})", self._choices(row))
        return None

    def row_meta(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The choices, for audit and for scoring outside the input text."""
        return {"choices": self._choices(row)}

    def parse(self, text: str, input_text: str) -> Parsed:
        """`... So the answer is (c) wooded area.` -> the text of choice (c)."""
        rationale, answer = split_answer(text)
        if answer is None:
            return Parsed(rationale, None)
        choices = choices_of(input_text)
        by_letter = _letter_choice(answer, choices)
        if by_letter is not None:
            return Parsed(rationale, self.normalize(by_letter))
        wanted = collapse(answer)
        by_text = next((c for c in choices if collapse(c) == wanted), None)
        # An answer outside the choices is kept: it is what the teacher said, and scores wrong.
        return Parsed(rationale, self.normalize(by_text or answer))

    def normalize(self, label: str) -> str | None:
        """Lower case, single spaces, no surrounding punctuation; None if nothing is left."""
        return collapse(label) or None

    def is_correct(self, predicted: str | None, gold: str | None) -> bool:
        """Exact match of normalised choice texts."""
        if predicted is None or gold is None:
            return False
        return collapse(predicted) == collapse(gold)
