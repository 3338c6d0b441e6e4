"""Scoring a student: label accuracy by the task's metric, in training and from an export."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dsbs.records import Record, read_records
from dsbs.student.decode import generate_texts
from dsbs.student.export import load_student
from dsbs.tasks import accuracy, get_task
from dsbs.train.examples import Example

log = logging.getLogger(__name__)


def reference_label(example: Example) -> str:
    """What a prediction is scored against: the gold label, or the teacher's where none exists."""
    return example.gold or example.label


def teacher_accuracy(examples: Sequence[Example], task: str) -> float | None:
    """How often the teacher's label matched gold on `examples`, by the task's metric.

    A row the teacher gave no label for counts as wrong, as a student's empty answer would.
    None when no row has both a gold label and any teacher label (nothing to compare).
    """
    scored = [e for e in examples if e.gold]
    if not scored or not any(e.teacher for e in scored):
        return None
    return accuracy(get_task(task), [(e.teacher or None, e.gold) for e in scored])


def padded_slice(examples: Sequence[Example], rank: int, world: int) -> tuple[list[Example], int]:
    """This rank's share of `examples`, padded to the same length on every rank.

    Under ZeRO-3 every forward pass is collective, so every rank must run the same number of
    batches; pad rows repeat the first example and are not counted.

    Returns:
        The rows and how many of them are real.
    """
    if not examples:
        return [], 0
    mine = list(examples[rank::world])
    per_rank = math.ceil(len(examples) / world) if examples else 0
    real = len(mine)
    return mine + [examples[0]] * (per_rank - real), real


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class EvalSummary:
    """The outcome of `dsbs evaluate`."""

    model: str
    data: str
    task: str
    rows: int
    skipped: int
    accuracy: float

    def line(self) -> str:
        """One line for the end of the command."""
        return (
            f"evaluated {self.model} on {self.rows} rows of {self.data} ({self.task}): "
            f"label accuracy {self.accuracy:.4f}; {self.skipped} rows without a label skipped"
        )


def evaluate_export(
    model: str, data: str, batch_size: int = 32, cache_dir: str | None = None
) -> EvalSummary:
    """Scores an exported student on records: its `predict:` output against the gold label.

    Rows without a gold label are scored against the teacher's label; rows with neither are
    skipped and counted.
    """
    student, tokenizer, info = load_student(model, cache_dir)
    task = get_task(info.task)
    records: list[Record] = read_records(data)
    scored = [r for r in records if (r.label or r.teacher_label)]
    correct = 0
    for batch in chunks(scored, batch_size):
        predictions = generate_texts(
            student,
            tokenizer,
            [info.label_prefix + r.input for r in batch],
            info.max_input_length,
            info.max_target_length,
        )
        correct += sum(
            task.is_correct(p, r.label or r.teacher_label)
            for p, r in zip(predictions, batch, strict=True)
        )
    return EvalSummary(
        model=model,
        data=data,
        task=info.task,
        rows=len(scored),
        skipped=len(records) - len(scored),
        accuracy=correct / len(scored) if scored else 0.0,
    )
