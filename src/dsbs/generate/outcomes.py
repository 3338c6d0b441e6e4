"""Turning teacher texts into a rationale record, or a quarantine reason (pure, no Ray).

With several samples per input (self-consistency), labels are grouped by the task's own
metric (so `(10 * 45)` and `(45 * 10)` vote together), the largest group wins (ties go to
the group seen first), and the kept rationale is the first sample in the winning group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dsbs.records import Record
from dsbs.tasks import Parsed, Task

# Quarantine reasons. Errors count against the error budget; filters are quality decisions
# that are counted and kept for audit but do not fail the stage.
BAD_ROW = "bad row"
TEACHER_ERROR = "teacher error"
UNPARSEABLE = "unparseable"
GOLD_MISMATCH = "gold mismatch"
ERROR_REASONS = frozenset({BAD_ROW, TEACHER_ERROR})


@dataclass(frozen=True)
class Outcome:
    """What became of one input: a record to write, or a quarantine reason."""

    record: Record | None
    reason: str | None = None
    detail: str = ""
    parsed: bool = False
    """Whether the teacher gave a readable label (for the parse rate)."""
    correct: bool | None = None
    """Teacher label against gold; None when there is no gold."""


def vote(task: Task, texts: list[str], input_text: str) -> tuple[Parsed | None, dict[str, int]]:
    """The majority parse among samples and the vote counts; (None, {}) if none parsed."""
    groups: list[tuple[str, list[Parsed]]] = []
    for parsed in (task.parse(text, input_text) for text in texts):
        if parsed.label is None:
            continue
        for representative, members in groups:
            if parsed.label == representative or task.is_correct(parsed.label, representative):
                members.append(parsed)
                break
        else:
            groups.append((parsed.label, [parsed]))
    if not groups:
        return None, {}
    counts = {label: len(members) for label, members in groups}
    _, winners = max(groups, key=lambda group: len(group[1]))  # max keeps the first of ties
    return winners[0], counts


def outcome_of(
    task: Task, row: dict[str, Any], texts: list[str], require_gold_match: bool
) -> Outcome:
    """The outcome of one input given the teacher's texts: voted, parsed and filtered.

    The majority label among the samples (`vote`), its rationale, and the filters: no
    readable label, or (with `require_gold_match`) a label that disagrees with gold, becomes
    a quarantine reason instead of a record.

    Args:
        task: the task.
        row: the input record as a row (`id`, `input`, `label`, `meta`, ...).
        texts: the teacher's samples for it.
        require_gold_match: where gold exists, quarantine rationales whose label is wrong.
    """
    chosen, counts = vote(task, texts, row["input"])
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    if chosen is None:
        return Outcome(None, UNPARSEABLE, f"no answer in {len(texts)} sample(s)")
    gold = row.get("label")
    correct = None if gold is None else task.is_correct(chosen.label, gold)
    if require_gold_match and correct is False:
        return Outcome(
            None, GOLD_MISMATCH, f"teacher said {chosen.label!r}, gold is {gold!r}", True, correct
        )
    if len(texts) > 1:
        meta = {**meta, "votes": counts}
    chosen_raw = next(t for t in texts if task.parse(t, row["input"]) == chosen)
    record = Record(
        id=row["id"],
        task=row["task"],
        input=row["input"],
        label=gold,
        teacher_label=chosen.label,
        rationale=chosen.rationale,
        teacher_raw=chosen_raw,
        meta=meta,
    )
    return Outcome(record, parsed=True, correct=correct)
