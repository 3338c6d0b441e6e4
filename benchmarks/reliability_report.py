"""Writes the figures of a `make chaos` run into RELIABILITY.md's table.

    python benchmarks/reliability_report.py runs/chaos/results.jsonl RELIABILITY.md

Each scenario recorded one row (tests/chaos_record.py). The table goes between the markers
`<!-- chaos:begin -->` and `<!-- chaos:end -->`; the rest of the file is prose kept by hand.
Fails (exit 1) when a scenario lost rows or when no scenario was recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"


def table(rows: list[dict], machine: str) -> str:
    """The Markdown table of the recorded scenarios, with when and where they ran."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Recorded by `make chaos` on {when}, {machine}.",
        "",
        "| scenario | injected | in | out | errors | lost | detail |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['injected']} | {row['sent']} | {row['answered']} | "
            f"{row['errors']} | {row['lost']} | {row['detail']} |"
        )
    return "\n".join(lines)


def _machine() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores of {model or platform.processor() or 'an unknown CPU'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the jsonl that make chaos recorded")
    parser.add_argument("page", help="RELIABILITY.md")
    args = parser.parse_args()
    results = Path(args.results)
    rows = (
        [json.loads(line) for line in results.read_text().splitlines() if line]
        if results.is_file()
        else []
    )
    if not rows:
        print(f"{results}: no scenario recorded", file=sys.stderr)
        return 1
    page = Path(args.page)
    text = page.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    page.write_text(f"{head}{BEGIN}\n{table(rows, _machine())}\n{END}{tail}")
    lost = [row["scenario"] for row in rows if row["lost"]]
    print(f"{len(rows)} scenarios written to {page}; rows lost in: {lost or 'none'}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
