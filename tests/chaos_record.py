"""Figures of the reliability suite: each scenario appends one row, RELIABILITY.md shows them.

`make chaos` sets DSBS_CHAOS_RESULTS to a jsonl file; without it (a plain `make test`) the
scenarios still run and assert, and nothing is recorded.
"""

from __future__ import annotations

import json
import os

RESULTS_ENV = "DSBS_CHAOS_RESULTS"


def full_run() -> bool:
    """True under `make chaos`: load scenarios run their full length, not make test's short one."""
    return bool(os.environ.get(RESULTS_ENV))


def record(
    scenario: str,
    injected: str,
    sent: int,
    answered: int,
    errors: int,
    lost: int,
    detail: str = "",
) -> None:
    """Appends one scenario's figures (rows or requests in and out, errors, rows lost)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    row = {
        "scenario": scenario,
        "injected": injected,
        "sent": sent,
        "answered": answered,
        "errors": errors,
        "lost": lost,
        "detail": detail,
    }
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
