"""Arithmetic word problems (SVAMP): labels are equations such as `( 84.0 / 2.0 )`.

Labels are kept as equations, in svamp's spaced style, so that the student learns to write
the computation; correctness is equality of values through the safe evaluator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dsbs.tasks import safe_math
from dsbs.tasks.base import Exemplar, Parsed, optional_label, required_text, split_answer

# The longest run of arithmetic characters that starts like a number or a bracket.
_EXPRESSION = re.compile(r"[-(.\d][\d\s.+\-*/()×÷]*")

EXEMPLARS = (
    Exemplar(
        "A baker made 24 muffins in the morning and 18 muffins in the afternoon.\n"
        "How many muffins did the baker make in all?",
        "The baker made 24 muffins and then 18 more. So the baker made 24 + 18 = 42 muffins.",
        "(24 + 18)",
    ),
    Exemplar(
        "Lena had 53 stickers. She gave 17 stickers to her brother.\n"
        "How many stickers does Lena have now?",
        "Lena started with 53 stickers and gave away 17 of them. So she has 53 - 17 = 36 left.",
        "(53 - 17)",
    ),
    Exemplar(
        "A crate holds 6 rows of apples with 12 apples in each row. A farmer fills 4 crates.\n"
        "How many apples does the farmer pack?",
        "One crate holds 6 * 12 = 72 apples. So 4 crates hold 72 * 4 = 288 apples.",
        "((6 * 12) * 4)",
    ),
    Exemplar(
        "Tom shares 56 marbles equally among 8 friends. Then each friend finds 3 more marbles.\n"
        "How many marbles does each friend have?",
        "Each friend first gets 56 / 8 = 7 marbles. With 3 more, each has 7 + 3 = 10 marbles.",
        "((56 / 8) + 3)",
    ),
    Exemplar(
        "Some children were on a bus. At the stop 9 children got off and 14 got on. "
        "Now there are 31 children on the bus.\nHow many children were on the bus at first?",
        "Undo the stop: before the 14 got on there were 31 - 14 = 17 children, and before "
        "the 9 got off there were 17 + 9 = 26 children.",
        "((31 - 14) + 9)",
    ),
)


def extract_expression(answer: str) -> str | None:
    """The arithmetic expression in an answer text (`(10 * 45)`, `$450 dollars`), canonical."""
    cleaned = answer.replace("$", "").replace(",", "")
    for match in _EXPRESSION.finditer(cleaned):
        candidate = match.group().strip().rstrip(".").strip()
        try:
            return safe_math.canonical(candidate)
        except safe_math.SafeMathError:
            continue
    return None


class ArithmeticTask:
    """SVAMP-style arithmetic: input is the problem text, label the equation."""

    exemplars: tuple[Exemplar, ...] = EXEMPLARS

    def __init__(self, name: str = "svamp") -> None:
        self.name = name

    def build_input(self, row: Mapping[str, Any]) -> str:
        """The problem text: `input`, or SVAMP's own `Body` + `Question`."""
        if row.get("Body") is not None and row.get("Question") is not None:
            return f"{required_text(row, 'Body')}\n{required_text(row, 'Question')}"
        return required_text(row, "input", "question")

    def gold_label(self, row: Mapping[str, Any]) -> str | None:
        """The gold equation, canonical; None when the row has none."""
        return optional_label(row, ("label", "Equation", "equation"), self.normalize)

    def row_meta(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Arithmetic rows carry no extras."""
        return {}

    def parse(self, text: str, input_text: str) -> Parsed:
        """Rationale and canonical equation from `... The answer is (10 * 45).`.

        An answer that is not arithmetic (`(23 + x)`, `(14, 21)`) is still the teacher's
        answer: it is kept verbatim, scores as wrong, and `require_gold_match` drops it.
        Only text with no answer at all gives a None label.
        """
        rationale, answer = split_answer(text)
        if answer is None:
            return Parsed(rationale, None)
        return Parsed(rationale, extract_expression(answer) or " ".join(answer.split()))

    def normalize(self, label: str) -> str | None:
        """Canonical spaced equation, or None when the label is not arithmetic."""
        return extract_expression(label)

    def is_correct(self, predicted: str | None, gold: str | None) -> bool:
        """Equal values (within a relative 1e-6), never string equality."""
        if predicted is None or gold is None:
            return False
        return safe_math.values_equal(predicted, gold)
