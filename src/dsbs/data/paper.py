"""Import the paper's data (google-research/distilling-step-by-step `datasets/` layout).

`ROOT/<name>/<name>_<split>.json` holds JSON lines; `ROOT/<name>/llm/<split>_CoT_<i>.json`
holds JSON lists of the teacher's raw few-shot CoT outputs, row-aligned with the data when
the files are read in numeric order of i. Each row becomes a record with the gold label,
the parsed teacher label and rationale, and the raw text.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from dsbs import storage
from dsbs.data.quarantine import MAX_BAD_FRACTION, Quarantine, check_budget, quarantine_path
from dsbs.errors import UsageError
from dsbs.records import IdAssigner, Record, write_records
from dsbs.tasks import Task, accuracy, get_task

log = logging.getLogger(__name__)

PAPER_DATASETS = ("svamp", "cqa", "anli1", "esnli")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ImportSummary:
    """What an import did."""

    dataset: str
    split: str
    out: str
    rows: int
    """Records written."""
    parsed: int
    """Records whose teacher text gave a label."""
    labeled: int
    """Records with a gold label."""
    teacher_accuracy: float
    """Share of labeled records whose teacher label is correct by the task metric."""
    quarantined: int
    duplicates: int
    """Rows whose id repeated an earlier one (kept, with a suffixed id)."""

    def line(self) -> str:
        """The one-line summary the command ends with."""
        parsed = self.parsed / self.rows if self.rows else 0.0
        return (
            f"import-paper {self.dataset}/{self.split}: {self.rows} rows -> {self.out}, "
            f"{parsed:.1%} parsed, teacher accuracy {self.teacher_accuracy:.1%} against gold "
            f"({self.labeled} labeled), {self.quarantined} quarantined, "
            f"{self.duplicates} duplicate ids"
        )


def _output_files(root: str, dataset: str, split: str) -> list[str]:
    folder = storage.join(root, dataset, "llm")
    pattern = re.compile(rf"^{split}_CoT_(\d+)\.json$")
    numbered = []
    for file in storage.list_files(folder):
        match = pattern.match(PurePosixPath(file).name)
        if match:
            numbered.append((int(match.group(1)), file))
    # Numeric order: train_CoT_10 comes after train_CoT_9, not after train_CoT_1.
    return [file for _, file in sorted(numbered)]


def _teacher_outputs(files: list[str]) -> list[tuple[str, int, object]]:
    """(file, 1-based index in file, output) for every teacher output, in row order."""
    outputs: list[tuple[str, int, object]] = []
    for file in files:
        try:
            items = json.loads(storage.read_bytes(file).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise storage.StorageError(
                f"{file}: not a JSON list of teacher outputs: {err}"
            ) from err
        if not isinstance(items, list):
            raise storage.StorageError(f"{file}: expected a JSON list, got {type(items).__name__}")
        outputs.extend((file, i, item) for i, item in enumerate(items, start=1))
    return outputs


def _record_of(
    task: Task,
    row: storage.SourceRow,
    output: tuple[str, int, object] | None,
    n_rows: int,
    n_outputs: int,
    ids: IdAssigner,
    quarantine: Quarantine,
) -> Record | None:
    """The record of one data row and its teacher output, or None with the row quarantined."""
    if row.data is None:
        kind = "not UTF-8" if row.error and row.error.startswith("not UTF-8") else "malformed JSON"
        quarantine.add(kind, row.error or "", row.file, row.line, row.raw)
        return None
    if output is None:
        reason = f"{n_rows} rows but {n_outputs} teacher outputs"
        quarantine.add("no teacher output", reason, row.file, row.line, json.dumps(row.data))
        return None
    out_file, out_index, text = output
    if not isinstance(text, str):
        reason = f"expected a string, got {type(text).__name__}"
        quarantine.add("teacher output not text", reason, out_file, out_index, json.dumps(row.data))
        return None
    try:
        input_text = task.build_input(row.data)
        gold = task.gold_label(row.data)
        meta = task.row_meta(row.data)
    except ValueError as err:
        kind = str(err).partition(":")[0]
        quarantine.add(kind, str(err), row.file, row.line, json.dumps(row.data))
        return None
    parsed = task.parse(text, input_text)
    return Record(
        id=ids(task.name, input_text, row.data.get("id", row.data.get("uid"))),
        task=task.name,
        input=input_text,
        label=gold,
        teacher_label=parsed.label,
        rationale=parsed.rationale,
        teacher_raw=text,
        meta=meta,
    )


def import_paper(
    dataset: str,
    root: str,
    split: str,
    out: str,
    max_bad_fraction: float = MAX_BAD_FRACTION,
) -> ImportSummary:
    """Reads one split of a paper dataset with its teacher outputs and writes records.

    Bad rows (malformed JSON, not UTF-8, missing or empty fields, no teacher output for a
    row, an output with no row) go to `<out>.quarantine.jsonl` with file, line and reason.

    Args:
        dataset: one of PAPER_DATASETS.
        root: the `datasets/` folder (local or s3://).
        split: train, valid or test.
        out: output file, .jsonl or .parquet (local or s3://).
        max_bad_fraction: share of bad rows tolerated before failing.

    Returns:
        The summary (its `line()` is what the CLI prints).

    Raises:
        UsageError: for an unknown dataset or split.
        StorageError: when the data or teacher output files are missing or unreadable.
        BadInputError: past the budget; the quarantine file is written, the output is not.
    """
    if dataset not in PAPER_DATASETS:
        raise UsageError(
            f"unknown dataset '{dataset}'; expected one of {', '.join(PAPER_DATASETS)}"
        )
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    task = get_task(dataset)
    data_file = storage.join(root, dataset, f"{dataset}_{split}.json")
    output_files = _output_files(root, dataset, split)
    if not output_files:
        raise storage.StorageError(
            f"no teacher outputs for {dataset}/{split}: expected "
            f"{storage.join(root, dataset, 'llm', f'{split}_CoT_0.json')}"
        )
    outputs = _teacher_outputs(output_files)
    quarantine, ids, records = Quarantine(), IdAssigner(), []
    rows = list(storage.iter_rows(data_file))
    for index, row in enumerate(rows):
        output = outputs[index] if index < len(outputs) else None
        record = _record_of(task, row, output, len(rows), len(outputs), ids, quarantine)
        if record is not None:
            records.append(record)
    for out_file, out_index, _ in outputs[len(rows) :]:
        quarantine.add(
            "teacher output without a row",
            f"{len(outputs)} teacher outputs but {len(rows)} rows in {data_file}",
            out_file,
            out_index,
        )
    where = quarantine_path(out)
    quarantine.write(where)
    check_budget(
        quarantine.by_reason,
        max(len(rows), len(outputs)),
        max_bad_fraction,
        "--max-bad-fraction",
        where,
    )
    # A rerun leaves the same rows as they are, and so what was trained on them.
    write_records(out, records, keep_same=True)
    labeled = [(r.teacher_label, r.label) for r in records if r.label is not None]
    summary = ImportSummary(
        dataset=dataset,
        split=split,
        out=out,
        rows=len(records),
        parsed=sum(r.teacher_label is not None for r in records),
        labeled=len(labeled),
        teacher_accuracy=accuracy(task, labeled),
        quarantined=len(quarantine),
        duplicates=ids.duplicates,
    )
    log.info(summary.line())
    return summary
