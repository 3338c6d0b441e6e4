"""Quarantine: bad input is kept with its reason, never dropped silently; one error budget.

Paper import, generation inputs and generation outputs write the same quarantine rows
(`quarantine_row`: `id`, `reason`, `detail`, `file`, `line`, `raw`, plus what helps to repair
the row), count them by reason, and check them against the same budget (`check_budget`),
which fails the stage loudly, naming the setting, the counts and where the rows are.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from dsbs import storage
from dsbs.errors import DsbsError, InputError

log = logging.getLogger(__name__)

LOGGED_ROWS = 20
"""Bad rows logged one by one before the log points to the quarantine file instead."""

MAX_BAD_FRACTION = 0.01
"""The share of bad rows `dsbs data import-paper` tolerates unless told otherwise."""


class BadInputError(InputError):
    """More bad rows than the budget allows; the message says how many and where they are."""


def quarantine_row(
    row_id: str,
    reason: str,
    detail: str,
    file: str = "",
    line: int = 0,
    raw: str = "",
    **context: Any,
) -> dict[str, Any]:
    """One quarantine entry: the row's id, why it was set aside, and what helps to repair it.

    Args:
        row_id: the row's id ("" where the row never got one).
        reason: short, countable (`malformed JSON`, `teacher error`, `gold mismatch`, ...).
        detail: the full reason.
        file: the source file, where the row came from one.
        line: its 1-based line (or list index + 1 in a JSON list), 0 where there is none.
        raw: the row's raw text.
        context: stage-specific fields (the teacher's texts, the input, token counts).
    """
    return {
        "id": row_id,
        "reason": reason,
        "detail": detail,
        "file": file,
        "line": line,
        "raw": raw,
        **context,
    }


def check_budget(
    bad: Mapping[str, int],
    total: int,
    max_fraction: float,
    setting: str,
    where: str,
    error: type[DsbsError] = BadInputError,
) -> None:
    """Fails when the bad rows' share of `total` passes `max_fraction`.

    Args:
        bad: bad rows by reason.
        total: all rows.
        max_fraction: the budget.
        setting: the key or flag that sets the budget, for the message.
        where: the quarantine file or folder, for the message.
        error: the stage's own DsbsError to raise.

    Raises:
        error: naming the counts by reason, the budget, its setting and the quarantine.
    """
    count = sum(bad.values())
    if total == 0 or count <= max_fraction * total:
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(bad).most_common() if n)
    raise error(
        f"{count} of {total} rows are bad ({count / total:.1%}: {reasons}), over the "
        f"{max_fraction:.1%} budget ({setting}); see {where}"
    )


class Quarantine:
    """Collects one stage's bad rows, logs the first ones, and writes them as jsonl."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.by_reason: Counter[str] = Counter()

    def add(
        self,
        reason: str,
        detail: str,
        file: str = "",
        line: int = 0,
        raw: str = "",
        row_id: str = "",
    ) -> None:
        """Records a bad row and logs it with file, line and reason (`quarantine_row`'s fields)."""
        self.rows.append(quarantine_row(row_id, reason, detail, file, line, raw))
        self.by_reason[reason] += 1
        # The first rows are logged for a quick look; all of them go to the quarantine file.
        if len(self.rows) <= LOGGED_ROWS:
            log.warning("%s:%d: %s: %s", file, line, reason, detail)
        elif len(self.rows) == LOGGED_ROWS + 1:
            log.warning("more bad rows: see the quarantine file")

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, uri: str) -> None:
        """Writes the bad rows as jsonl.

        The file is written even when empty, so that no stale file from an earlier run is
        mistaken for this one's.
        """
        storage.write_rows(uri, self.rows, "jsonl")


def quarantine_path(out: str) -> str:
    """`out.jsonl` -> `out.quarantine.jsonl`, beside the output."""
    stem, dot, _ = out.rpartition(".")
    return f"{stem if dot else out}.quarantine.jsonl"
