"""Quarantine: bad input is kept with file, line and reason, never dropped silently.

Bad rows are counted by kind, written next to the output, and checked against an error
budget that fails the stage loudly when passed.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass

from dsbs import storage

log = logging.getLogger(__name__)

LOGGED_ROWS = 20
"""Bad rows logged one by one before the log points to the quarantine file instead."""


class BadInputError(RuntimeError):
    """More bad rows than the budget allows; the message says how many and where they are."""


@dataclass(frozen=True)
class BadRow:
    """One quarantined row."""

    kind: str
    """Short reason used for counting (`malformed JSON`, `missing field`, ...)."""
    file: str
    """Source file."""
    line: int
    """1-based line (or list index + 1 for JSON list files)."""
    detail: str
    """The full reason."""
    raw: str = ""
    """The row's raw text, for repair."""


class Quarantine:
    """Collects bad rows and decides whether a stage may go on."""

    def __init__(self) -> None:
        self.rows: list[BadRow] = []
        self.by_kind: Counter[str] = Counter()

    def add(self, kind: str, file: str, line: int, detail: str, raw: str = "") -> None:
        """Records a bad row and logs it with file, line and reason."""
        self.rows.append(BadRow(kind, file, line, detail, raw))
        self.by_kind[kind] += 1
        # The first rows are logged for a quick look; all of them go to the quarantine file.
        if len(self.rows) <= LOGGED_ROWS:
            log.warning("%s:%d: %s: %s", file, line, kind, detail)
        elif len(self.rows) == LOGGED_ROWS + 1:
            log.warning("more bad rows: see the quarantine file")

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, uri: str) -> None:
        """Writes the bad rows as jsonl.

        The file is written even when empty, so that no stale file from an earlier run is
        mistaken for this one's.
        """
        storage.write_rows(uri, (asdict(row) for row in self.rows), "jsonl")

    def check_budget(self, total: int, max_fraction: float, where: str) -> None:
        """Fails when the bad share of `total` rows passes `max_fraction`.

        Raises:
            BadInputError: naming the counts by kind, the budget and the quarantine file.
        """
        if total == 0 or len(self) / total <= max_fraction:
            return
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.by_kind.most_common())
        raise BadInputError(
            f"{len(self)} of {total} rows are bad ({len(self) / total:.1%}), over the "
            f"{max_fraction:.1%} budget ({kinds}); see {where}"
        )


def quarantine_path(out: str) -> str:
    """`out.jsonl` -> `out.quarantine.jsonl`, beside the output."""
    stem, dot, _ = out.rpartition(".")
    return f"{stem if dot else out}.quarantine.jsonl"
