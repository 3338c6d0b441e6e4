"""Generation's output, one input shard at a time: the unit of atomic writes and of resume.

    OUT/data/part-NNNNN.parquet       the records of input shard NNNNN (absent when none)
    OUT/quarantine/part-NNNNN.jsonl   its quarantined rows with their reasons (absent when none)
    OUT/done/part-NNNNN.json          its counts, written last: the shard is done

A shard is written once every row the run sent of it is back: data, then quarantine, then
its counts. A rerun skips the shards that have counts without reading their rows and sends
the others whole. A done shard whose counts show teacher errors sends only those rows again
(an outage is not the row's fault; bad input and unparseable answers are final), and their
new outcomes replace the old ones in the shard's files. So the driver holds counts and the
rows of the shards in flight - never the set of finished ids, which grew with the run and
went into every read task.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from dsbs import storage
from dsbs.generate.inputs import Inputs
from dsbs.generate.outcomes import GOLD_MISMATCH, TEACHER_ERROR
from dsbs.records import Record, iter_records, write_records
from dsbs.tasks import Task

log = logging.getLogger(__name__)


def _name(index: int) -> str:
    return f"part-{index:05d}"


def data_file(out_dir: str, index: int) -> str:
    """The shard's records."""
    return storage.join(out_dir, "data", f"{_name(index)}.parquet")


def quarantine_file(out_dir: str, index: int) -> str:
    """The shard's quarantined rows."""
    return storage.join(out_dir, "quarantine", f"{_name(index)}.jsonl")


def counts_file(out_dir: str, index: int) -> str:
    """The shard's counts: present once the shard is done."""
    return storage.join(out_dir, "done", f"{_name(index)}.json")


@dataclass
class ShardCounts:
    """What one input shard came to (its `done/` file)."""

    rows: int
    """Input rows in the shard."""
    written: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    """Quarantined rows by reason."""
    with_gold: int = 0
    """Answered rows with a gold label (gold mismatches included)."""
    correct: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: ShardCounts) -> None:
        """Adds another shard's counts to these."""
        for name in ("rows", "written", "with_gold", "correct", "prompt_tokens", "output_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.quarantined = dict(Counter(self.quarantined) + Counter(other.quarantined))


def count_shard(
    task: Task, rows: int, records: list[Record], bad: list[dict[str, Any]]
) -> ShardCounts:
    """The counts of a shard's outcomes."""
    counts = ShardCounts(rows, written=len(records))
    reasons = Counter(q["reason"] for q in bad)
    counts.quarantined = dict(reasons)
    # Gold mismatches were parsed and wrong: they count in agreement, as in the paper's filter.
    counts.with_gold = reasons[GOLD_MISMATCH]
    for record in records:
        tokens = record.meta.get("teacher_tokens", {})
        counts.prompt_tokens += tokens.get("prompt_tokens", 0)
        counts.output_tokens += tokens.get("output_tokens", 0)
        if record.label is not None:
            counts.with_gold += 1
            counts.correct += task.is_correct(record.teacher_label, record.label)
    for row in bad:
        counts.prompt_tokens += row.get("prompt_tokens", 0) or 0
        counts.output_tokens += row.get("output_tokens", 0) or 0
    return counts


def read_counts(out_dir: str) -> dict[int, ShardCounts]:
    """The counts of every done shard, by shard number."""
    done = {}
    for file in storage.list_files(storage.join(out_dir, "done")):
        name = file.replace("\\", "/").rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(".json"):
            done[int(name[5:-5])] = ShardCounts(**json.loads(storage.read_bytes(file)))
    return done


def _shard_rows(out_dir: str, index: int) -> tuple[list[Record], list[dict[str, Any]]]:
    """A shard's records and quarantined rows as its files hold them now."""
    records: list[Record] = []
    bad: list[dict[str, Any]] = []
    if storage.exists(data_file(out_dir, index)):
        records = list(iter_records(data_file(out_dir, index)))
    if storage.exists(quarantine_file(out_dir, index)):
        rows = storage.iter_rows(quarantine_file(out_dir, index))
        bad = [r.data for r in rows if r.data is not None]
    return records, bad


@dataclass(frozen=True)
class ShardWork:
    """One input shard to send (again)."""

    index: int
    file: str
    rows: int
    """Rows sent in this run."""
    only: tuple[str, ...] | None = None
    """The ids to send again (teacher errors of a done shard); None: the whole shard."""


@dataclass
class ResumePlan:
    """What a run sends, and what earlier runs already did."""

    work: list[ShardWork]
    skipped: int
    """Rows done by earlier runs and not sent again."""
    retried: int
    """Rows that failed at the teacher in an earlier run and are sent again."""


def plan_resume(out_dir: str, inputs: Inputs, task: Task) -> ResumePlan:
    """The shards to send: those without counts whole, teacher errors of the others.

    Reads only the `done/` counts, and the files of the shards whose counts show teacher
    errors (a handful, after an outage).
    """
    done = read_counts(out_dir)
    work, skipped, retried = [], 0, 0
    for index, (file, rows) in enumerate(zip(inputs.files, inputs.counts, strict=True)):
        counts = done.get(index)
        if counts is None:
            work.append(ShardWork(index, file, rows))
            continue
        if not counts.quarantined.get(TEACHER_ERROR):
            skipped += counts.rows
            continue
        records, bad = _shard_rows(out_dir, index)
        answered = {r.id for r in records}  # a run stopped between the files may leave both
        again = tuple(
            q["id"] for q in bad if q["reason"] == TEACHER_ERROR and q["id"] not in answered
        )
        if not again:  # that run stopped before rewriting the counts
            write_counts(out_dir, index, count_shard(task, counts.rows, records, bad))
            skipped += counts.rows
            continue
        work.append(ShardWork(index, file, len(again), again))
        skipped += counts.rows - len(again)
        retried += len(again)
    return ResumePlan(work, skipped, retried)


def write_counts(out_dir: str, index: int, counts: ShardCounts) -> None:
    """Marks a shard done with its counts."""
    storage.write_bytes(counts_file(out_dir, index), json.dumps(asdict(counts)).encode())


class ShardWriter:
    """Collects outcomes by input shard and writes each shard when all its rows are back.

    Outcomes of a shard sent again replace the same ids in its files; the rest stays.
    """

    def __init__(self, out_dir: str, task: Task, work: list[ShardWork], rows: dict[int, int]):
        """`rows`: every sent shard's input row count (for its counts)."""
        self.out_dir = out_dir
        self.task = task
        self.expected = {w.index: w.rows for w in work}
        self.again = {w.index for w in work if w.only is not None}
        self.rows = rows
        self.pending: dict[int, dict[str, tuple[Record | None, dict[str, Any] | None]]] = {}

    def add(
        self, shard: int, row_id: str, record: Record | None, bad: dict[str, Any] | None
    ) -> bool:
        """Takes one row's outcome; False for a repeat, which is dropped.

        A retried Ray Data task sends its rows again.
        """
        if shard not in self.expected:
            return False
        outcomes = self.pending.setdefault(shard, {})
        if row_id in outcomes:
            return False
        outcomes[row_id] = (record, bad)
        if len(outcomes) == self.expected[shard]:
            self._write(shard, done=True)
        return True

    def close(self) -> None:
        """Writes the outcomes of shards left incomplete (a failed run), without counts.

        They are sent whole again by the next run (a shard sent again keeps its old counts,
        so the next run finds its teacher errors once more); what is written shows why the
        run stopped.
        """
        for shard in list(self.pending):
            self._write(shard, done=False)

    def _write(self, shard: int, done: bool) -> None:
        outcomes = self.pending.pop(shard)
        if done:
            del self.expected[shard]
        records: list[Record] = []
        bad: list[dict[str, Any]] = []
        if shard in self.again:
            old_records, old_bad = _shard_rows(self.out_dir, shard)
            records = [r for r in old_records if r.id not in outcomes]
            bad = [q for q in old_bad if q["id"] not in outcomes]
        records += [record for record, _ in outcomes.values() if record is not None]
        bad += [row for _, row in outcomes.values() if row is not None]
        data, quarantine = data_file(self.out_dir, shard), quarantine_file(self.out_dir, shard)
        if records:
            write_records(data, records)
        else:
            storage.delete(data)
        if bad:
            storage.write_rows(quarantine, bad, "jsonl")
        else:
            storage.delete(quarantine)
        if done:
            write_counts(
                self.out_dir, shard, count_shard(self.task, self.rows[shard], records, bad)
            )
