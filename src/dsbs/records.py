"""The record schema every stage reads and writes, and stable, unique ids.

One row per example; parquet, jsonl and csv use the same column names. `meta` is a JSON
object in jsonl and a JSON-encoded string in parquet and csv, so that its columns never
change type between shards.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from dsbs import storage
from dsbs.errors import InputError

FIELDS = ("id", "task", "input", "label", "teacher_label", "rationale", "teacher_raw", "meta")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("input", pa.string()),
        ("label", pa.string()),
        ("teacher_label", pa.string()),
        ("rationale", pa.string()),
        ("teacher_raw", pa.string()),
        ("meta", pa.string()),
    ]
)


@dataclass
class Record:
    """One example: what the student sees, the gold label, and what the teacher said."""

    id: str
    """Stable and unique within a dataset: the source's own id, or a hash of task + input."""
    task: str
    """Task name in the registry."""
    input: str
    """The text the student sees (after the task's formatting)."""
    label: str | None = None
    """Gold label, normalised by the task; None when unlabeled."""
    teacher_label: str | None = None
    """The teacher's label parsed from its text; None when it gave no readable answer."""
    rationale: str | None = None
    """The teacher's reasoning, without the answer sentence."""
    teacher_raw: str | None = None
    """The unparsed teacher text, kept for audit."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task extras (e.g. multiple-choice options) and provenance."""

    def to_row(self, fmt: storage.Format = "jsonl") -> dict[str, Any]:
        """The record as a row for `fmt` (meta JSON-encoded outside jsonl)."""
        row = asdict(self)
        if fmt != "jsonl":
            row["meta"] = json.dumps(self.meta, ensure_ascii=False, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        """Builds a record from a jsonl/parquet/csv row; unknown columns are refused.

        Raises:
            InputError: on a missing `id`/`task`/`input` or an unknown column (a ValueError).
        """
        unknown = set(row) - set(FIELDS)
        if unknown:
            raise InputError(f"unknown record fields: {sorted(unknown)}")
        missing = [name for name in ("id", "task", "input") if not row.get(name)]
        if missing:
            raise InputError(f"missing record fields: {missing}")
        meta = row.get("meta") or {}
        if isinstance(meta, str):
            meta = json.loads(meta)

        def text(name: str) -> str | None:
            # csv has no null: an empty cell is a missing value.
            value = row.get(name)
            return None if value is None or value == "" else str(value)

        return cls(
            id=str(row["id"]),
            task=str(row["task"]),
            input=str(row["input"]),
            label=text("label"),
            teacher_label=text("teacher_label"),
            rationale=text("rationale"),
            teacher_raw=text("teacher_raw"),
            meta=meta,
        )


def make_id(task: str, text: str) -> str:
    """A stable id from task and input: the same text gives the same id in every run."""
    digest = hashlib.sha256(f"{task}\x1f{text}".encode()).hexdigest()[:16]
    return f"{task}-{digest}"


class IdAssigner:
    """Keeps ids unique within one dataset while keeping them stable across runs.

    A repeated id (the same input twice, or a source that reuses ids) gets a suffix by
    order of appearance (`~2`, `~3`), so reading the same file twice yields the same ids;
    repeats are counted in `duplicates`.
    """

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()
        self.duplicates = 0

    def __call__(self, task: str, text: str, source_id: Any = None) -> str:
        """The id for the next row: the source's own id if given, else a hash."""
        has_source_id = source_id is not None and str(source_id) != ""
        base = str(source_id) if has_source_id else make_id(task, text)
        self._seen[base] += 1
        count = self._seen[base]
        if count == 1:
            return base
        self.duplicates += 1
        return f"{base}~{count}"


def write_records(uri: str, records: Iterable[Record], keep_same: bool = False) -> bool:
    """Writes records atomically as jsonl, parquet or csv (by extension).

    With `keep_same`, a file that already holds exactly these bytes is left as it is, so its
    fingerprint (its modification time) stays and the stages that read it find their outputs
    done: for the commands that write a stage's inputs, which users rerun (`make demo`).

    Returns:
        Whether the file was written.
    """
    fmt = storage.format_of(uri)
    data = storage.encode_rows((r.to_row(fmt) for r in records), fmt, SCHEMA)
    if keep_same and storage.exists(uri) and storage.read_bytes(uri) == data:
        return False
    storage.write_bytes(uri, data)
    return True


def read_records(uri: str) -> list[Record]:
    """Reads records from a file or a folder/prefix of shards (all of them, in memory).

    Raises:
        StorageError: on an unreadable file or a malformed row, naming file and line.
    """
    return list(iter_records(uri))


def iter_records(uri: str) -> Iterator[Record]:
    """Streams records from a file or a folder/prefix of shards, file by file.

    Raises:
        StorageError: on an unreadable file or a malformed row, naming file and line.
    """
    for file in storage.row_files(uri):
        for row in storage.iter_rows(file):
            if row.data is None:
                raise storage.StorageError(f"{row.file}:{row.line}: {row.error}")
            try:
                yield Record.from_row(row.data)
            except ValueError as err:
                raise storage.StorageError(f"{row.file}:{row.line}: {err}") from err
