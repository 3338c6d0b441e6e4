"""What a generate run did: this run's counts, the output's totals, stats.json and the summary line.

Totals are summed from the shards' counts (shards.py) over every run of the same config; the
teacher's calls, retries, latencies and throughput are this run's alone.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dsbs import storage
from dsbs.generate.inputs import Inputs
from dsbs.generate.outcomes import BAD_ROW, GOLD_MISMATCH, UNPARSEABLE
from dsbs.generate.shards import ShardCounts, read_counts
from dsbs.rundir import StageOutput, write_json
from dsbs.teachers.client import percentile


@dataclass(frozen=True)
class GenerateSummary:
    """What a generate run did; `line()` is the one-line summary."""

    output: str
    rows_in: int
    written: int
    quarantined: dict[str, int]
    teacher_calls: int
    """Inputs sent to the teacher in this run (not counting retries)."""
    retries: int
    """Attempts beyond the first, over this run's inputs."""
    timeouts: int
    """Attempts that timed out (and were aborted in the engine) in this run."""
    in_flight: int
    """Requests in flight at the end, as the adaptive limit left it."""
    skipped: int
    """Inputs already done by an earlier run of the same config."""
    parse_rate: float
    agreement_with_gold: float | None
    output_tokens_per_s: float
    wall_time_s: float

    def line(self) -> str:
        """The summary line printed at the end."""
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.quarantined.items())) or "none"
        gold = "n/a" if self.agreement_with_gold is None else f"{self.agreement_with_gold:.1%}"
        return (
            f"generate: {self.rows_in} rows in, {self.written} written, quarantined: {reasons}; "
            f"{self.teacher_calls} teacher calls ({self.skipped} rows already done, "
            f"{self.retries} retries, {self.timeouts} timeouts); "
            f"parse rate {self.parse_rate:.1%}, agreement with gold {gold}; "
            f"{self.output_tokens_per_s:.1f} output tokens/s at {self.in_flight} in flight; "
            f"{self.wall_time_s:.1f} s "
            f"-> {self.output}"
        )


class LatencySample:
    """A uniform sample of a run's latencies (reservoir sampling).

    Its percentiles stand for the run's, in memory that does not grow with the run.
    """

    SIZE = 10_000

    def __init__(self) -> None:
        self.values: list[float] = []
        self.seen = 0
        self._rng = random.Random(0)  # noqa: S311 - sampling, not security

    def add(self, value: float) -> None:
        """Counts one latency; keeps it with probability SIZE / seen."""
        self.seen += 1
        if len(self.values) < self.SIZE:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.SIZE:
            self.values[slot] = value


@dataclass
class RunCounts:
    """What this run (not earlier runs of the same config) did with the teacher."""

    skipped: int
    """Inputs already done by an earlier run."""
    calls: int = 0
    retries: int = 0
    output_tokens: int = 0
    timeouts: int = 0
    in_flight: int = 0
    """Requests in flight at the end, as the adaptive limits left them."""
    streaming_s: float = 0.0
    """Seconds of the streaming phase: the teacher's start-up and shutdown are not generation."""
    latencies: LatencySample = field(default_factory=LatencySample)
    """Seconds from an input's first attempt to its answer, retries included."""

    def count(self, row: dict[str, Any]) -> None:
        """Counts one answered input (a TeacherCaller output row)."""
        self.calls += 1
        self.output_tokens += row["output_tokens"] or 0
        self.retries += row["attempts"] - 1
        self.latencies.add(row["latency_s"])


def write_stats(
    output: StageOutput, inputs: Inputs, run: RunCounts, wall: float
) -> GenerateSummary:
    """Writes stats.json and finishes the output's manifest; returns the summary.

    Counts cover the whole output (every run of this config), summed from the shards' counts
    so that no row is read again; throughput and latencies are this run's.
    """
    whole = ShardCounts(0)
    for counts in read_counts(output.path).values():
        whole.add(counts)
    by_reason = Counter(whole.quarantined)
    if inputs.bad:
        by_reason[BAD_ROW] += inputs.bad
    answered = whole.written + by_reason[UNPARSEABLE] + by_reason[GOLD_MISMATCH]
    summary = GenerateSummary(
        output=storage.join(output.path, "data"),
        rows_in=inputs.rows_in,
        written=whole.written,
        quarantined=dict(by_reason),
        teacher_calls=run.calls,
        retries=run.retries,
        timeouts=run.timeouts,
        in_flight=run.in_flight,
        skipped=run.skipped,
        parse_rate=(whole.written + by_reason[GOLD_MISMATCH]) / answered if answered else 0.0,
        agreement_with_gold=whole.correct / whole.with_gold if whole.with_gold else None,
        output_tokens_per_s=run.output_tokens / run.streaming_s if run.streaming_s > 0 else 0.0,
        wall_time_s=wall,
    )
    stats = {
        "rows_in": summary.rows_in,
        "written": summary.written,
        "quarantined": summary.quarantined,
        "duplicate_ids": inputs.duplicates,
        "parse_rate": summary.parse_rate,
        "agreement_with_gold": summary.agreement_with_gold,
        "prompt_tokens": whole.prompt_tokens,
        "output_tokens": whole.output_tokens,
        "this_run": {
            "teacher_calls": run.calls,
            "skipped_already_done": run.skipped,
            "retries": run.retries,
            "timeouts": run.timeouts,
            "in_flight_at_end": run.in_flight,
            "latency_p50_s": percentile(run.latencies.values, 0.5),
            "latency_p90_s": percentile(run.latencies.values, 0.9),
            "output_tokens": run.output_tokens,
            "output_tokens_per_s": summary.output_tokens_per_s,
            "streaming_s": run.streaming_s,
            "wall_time_s": wall,
        },
    }
    write_json(storage.join(output.path, "stats.json"), stats)
    quarantined = sum(by_reason.values())
    output.finish(
        complete=whole.written + quarantined == summary.rows_in,
        counts={"rows_in": summary.rows_in, "written": whole.written, "quarantined": quarantined},
    )
    return summary
