"""Phase one of generation: normalise the source into input records with unique ids.

The driver streams the source once, in order, so that ids are stable and unique (a repeated
input gets `~2`), bad rows are quarantined with file, line and reason, and the good rows
land in parquet shards that Ray Data then streams to the teacher. The phase is skipped when
its manifest exists, so a resumed run starts straight at the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dsbs import storage
from dsbs.data.quarantine import quarantine_row
from dsbs.data.sources import iter_source_rows
from dsbs.generate.outcomes import BAD_ROW
from dsbs.records import FIELDS, IdAssigner, Record, write_records
from dsbs.rundir import read_json, write_json
from dsbs.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """What phase one produced."""

    files: list[str]
    """Parquet shards of input records."""
    rows: int
    """Good rows (with ids)."""
    bad: int
    """Rows quarantined as bad input."""
    duplicates: int
    """Rows whose id repeated an earlier one (kept, suffixed)."""
    counts: list[int]
    """Rows in each shard, in the order of `files`."""

    @property
    def rows_in(self) -> int:
        """Every row the source held: the good ones and those quarantined as bad input."""
        return self.rows + self.bad


def _as_record(task: Task, data: dict[str, Any], ids: IdAssigner) -> Record:
    """A source row as an input record: dsbs records pass through, raw task rows are built."""
    if "input" in data and "task" in data and set(data) <= set(FIELDS):
        record = Record.from_row(data)
        if record.task != task.name:
            raise ValueError(f"record is for task '{record.task}', not '{task.name}'")
        gold = task.normalize(record.label) if record.label else None
        return Record(
            ids(task.name, record.input, record.id), task.name, record.input, gold, meta=record.meta
        )
    input_text = task.build_input(data)
    return Record(
        id=ids(task.name, input_text, data.get("id", data.get("uid"))),
        task=task.name,
        input=input_text,
        label=task.gold_label(data),
        meta=task.row_meta(data),
    )


def _chunks(
    task: Task, source: str, shard_rows: int, ids: IdAssigner, bad: list[dict[str, Any]]
) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for row in iter_source_rows(source):
        where = f"{row.file}:{row.line}"
        bad_id = "bad-" + hashlib.sha256(where.encode()).hexdigest()[:16]
        if row.data is None:
            bad.append(
                quarantine_row(
                    bad_id, BAD_ROW, row.error or "", file=row.file, line=row.line, raw=row.raw
                )
            )
            continue
        try:
            chunk.append(_as_record(task, row.data, ids))
        except (ValueError, TypeError) as err:
            raw = json.dumps(row.data, default=str)
            bad.append(
                quarantine_row(bad_id, BAD_ROW, str(err), file=row.file, line=row.line, raw=raw)
            )
            continue
        if len(chunk) == shard_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prepare_inputs(task: Task, source: str, out_dir: str, shard_rows: int) -> Inputs:
    """Writes `out_dir/inputs/part-*.parquet` and `out_dir/quarantine/inputs.jsonl` once.

    Returns:
        The shards and counts (read back from the manifest when phase one already ran).
    """
    manifest_path = storage.join(out_dir, "inputs", "manifest.json")
    manifest = read_json(manifest_path)
    if manifest is not None and manifest.get("source") == source:
        return Inputs(
            manifest["files"],
            manifest["rows"],
            manifest["bad"],
            manifest["duplicates"],
            manifest["counts"],
        )
    ids, files, rows, counts = IdAssigner(), [], 0, []
    bad: list[dict[str, Any]] = []
    for index, chunk in enumerate(_chunks(task, source, shard_rows, ids, bad)):
        file = storage.join(out_dir, "inputs", f"part-{index:05d}.parquet")
        write_records(file, chunk)
        files.append(file)
        counts.append(len(chunk))
        rows += len(chunk)
    storage.write_rows(storage.join(out_dir, "quarantine", "inputs.jsonl"), bad, "jsonl")
    # The manifest goes last: without it, a rerun redoes this phase from the start.
    write_json(
        manifest_path,
        {
            "source": source,
            "files": files,
            "rows": rows,
            "bad": len(bad),
            "duplicates": ids.duplicates,
            "counts": counts,
        },
    )
    log.info(
        "inputs: %d rows, %d bad, %d duplicate ids -> %d shards",
        rows,
        len(bad),
        ids.duplicates,
        len(files),
    )
    return Inputs(files, rows, len(bad), ids.duplicates, counts)
