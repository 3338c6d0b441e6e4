"""What every task provides, and the answer-finding shared by all parsers.

A teacher's chain-of-thought text looks like `<rationale> So the answer is <label>.`, often
followed by a run-on continuation (the model starts the next few-shot exemplar). Parsing
cuts the run-on, finds the first answer phrase, and hands the answer text to the task,
which turns it into a normalised label (or None). Parsers never raise on any text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

RUN_ON_MARKERS = ("\nQ:", "\nQuestion:", "\nPremise:", "\nA:", "\nInput:")
"""Where a continuation into a new exemplar starts; the text after it is not this answer."""

STOP_SEQUENCES = ("\nQ:", "\n\n\n")
"""Stops for the teacher's sampler: every prompt's exemplars start with `Q:`."""

CHAT_SYSTEM = (
    "Answer each question by reasoning step by step, then end with "
    '"So the answer is" followed by the answer.'
)
"""The system turn of chat prompts; the exemplars show the format."""

_ANSWER = re.compile(
    r"(?:\b(?:so|thus|therefore|hence)\s*,?\s+)?\bthe\s+(?:final\s+|correct\s+|best\s+)?answer\s+is\b\s*:?"
    r"|(?:^|(?<=[.!?\n]))\s*(?:final\s+)?answer\s*:",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])|\n")


@dataclass(frozen=True)
class Parsed:
    """A teacher text split into its rationale and its label (None: no readable answer)."""

    rationale: str
    label: str | None


@dataclass(frozen=True)
class Exemplar:
    """One few-shot chain-of-thought example, written for this project."""

    input: str
    """The student input, formatted as the task formats it."""
    rationale: str
    """The reasoning, without the answer sentence."""
    answer: str
    """What follows `So the answer is` (for choices, `(b) cupboard`)."""


class Task(Protocol):
    """A task: how inputs look, how teacher text is read, and how answers are scored."""

    name: str
    exemplars: tuple[Exemplar, ...]

    def build_input(self, row: Mapping[str, Any]) -> str:
        """The student input for a raw source row; ValueError if a field is missing."""
        ...

    def gold_label(self, row: Mapping[str, Any]) -> str | None:
        """The normalised gold label of a raw source row, or None when unlabeled."""
        ...

    def row_meta(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Task extras to keep with the record (e.g. the choices)."""
        ...

    def parse(self, text: str, input_text: str) -> Parsed:
        """Splits teacher text into (rationale, label) for this input; never raises."""
        ...

    def normalize(self, label: str) -> str | None:
        """The canonical form of a label, or None when it is not a valid label."""
        ...

    def is_correct(self, predicted: str | None, gold: str | None) -> bool:
        """The task metric for one example."""
        ...


def cut_run_on(text: str) -> str:
    """The text up to the first marker of a new exemplar."""
    end = len(text)
    for marker in RUN_ON_MARKERS:
        index = text.find(marker)
        if 0 <= index < end:
            end = index
    return text[:end]


def split_answer(text: str) -> tuple[str, str | None]:
    """Splits teacher text into (rationale, answer text) at the last answer phrase.

    The last, because rationales sometimes open with "The answer is something that ..." and
    the real answer closes them; the run-on cut keeps later exemplars out of reach.

    The answer text runs to the end of its sentence or line, without the final period.
    Returns the whole (cut) text as rationale and None when there is no answer phrase.
    """
    text = cut_run_on(text)
    match = None
    for match in _ANSWER.finditer(text):  # noqa: B007 - the last match is the one wanted
        pass
    if match is None:
        return text.strip(), None
    rationale = text[: match.start()].strip()
    rest = text[match.end() :].strip()
    end = _SENTENCE_END.search(rest)
    answer = (rest[: end.start()] if end else rest).strip().rstrip(".").strip()
    return rationale, answer or None


def collapse(text: str) -> str:
    """Lower case with single spaces and no surrounding punctuation, for label comparison."""
    return " ".join(text.lower().split()).strip(" .,:;!?\"'`")


def optional_label(
    row: Mapping[str, Any], names: Sequence[str], normalize: Callable[[str], str | None]
) -> str | None:
    """The first present, non-empty field among `names`, normalised; None when there is none."""
    for name in names:
        value = row.get(name)
        if value not in (None, ""):
            return normalize(str(value))
    return None


def required_text(row: Mapping[str, Any], *names: str) -> str:
    """The first present, non-empty text field among `names`.

    Raises:
        ValueError: `empty field: NAME` when present but blank, else `missing field: NAMES`.
    """
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    blank = [name for name in names if isinstance(row.get(name), str)]
    if blank:
        raise ValueError(f"empty field: {blank[0]}")
    raise ValueError(f"missing field: {' / '.join(names)}")


def format_exemplar(
    input_text: str, rationale: str | None = None, answer: str | None = None
) -> str:
    """One `Q: ... A: ...` block; without a rationale it is the open question to answer."""
    if rationale is None:
        return f"Q: {input_text}\nA:"
    return f"Q: {input_text}\nA: {rationale} So the answer is {answer}."


def build_prompt(task: Task, input_text: str, num_exemplars: int | None = None) -> str:
    """The few-shot chain-of-thought completion prompt for one input.

    `num_exemplars` keeps the task's first exemplars only (None: all of them).
    """
    shots = [
        format_exemplar(e.input, e.rationale, e.answer) for e in task.exemplars[:num_exemplars]
    ]
    return "\n\n".join([*shots, format_exemplar(input_text)])


def build_messages(
    task: Task, input_text: str, num_exemplars: int | None = None
) -> tuple[tuple[str, str], ...]:
    """The few-shot chain-of-thought prompt as chat turns, for instruct models.

    Each exemplar is a user question and an assistant answer, so the model's chat template
    frames them as it was trained to; the last turn is the open question. `num_exemplars`
    keeps the task's first exemplars only (None: all of them).
    """
    turns: list[tuple[str, str]] = [("system", CHAT_SYSTEM)]
    for e in task.exemplars[:num_exemplars]:
        turns.append(("user", f"Q: {e.input}"))
        turns.append(("assistant", f"{e.rationale} So the answer is {e.answer}."))
    turns.append(("user", f"Q: {input_text}"))
    return tuple(turns)


def accuracy(task: Task, pairs: Iterable[tuple[str | None, str | None]]) -> float:
    """Share of (predicted, gold) pairs the task counts correct; 0.0 for no pairs."""
    pairs = list(pairs)
    if not pairs:
        return 0.0
    return sum(task.is_correct(p, g) for p, g in pairs) / len(pairs)
