"""Generation's output by input shard (issue 15, item 4): what a rerun sends, what it skips,
and how teacher errors are sent again - on local files, without Ray or a teacher."""

from __future__ import annotations

import json

from dsbs import storage
from dsbs.data.quarantine import quarantine_row
from dsbs.generate.inputs import Inputs
from dsbs.generate.outcomes import TEACHER_ERROR, UNPARSEABLE
from dsbs.generate.shards import (
    ShardWriter,
    counts_file,
    data_file,
    plan_resume,
    quarantine_file,
    read_counts,
)
from dsbs.records import Record, iter_records, write_records
from dsbs.tasks import get_task

TASK = get_task("svamp")
INPUTS = Inputs(["in-0.parquet", "in-1.parquet", "in-2.parquet"], 9, 0, 0, [3, 3, 3])


def _ids(shard: int) -> list[str]:
    return [f"s{shard}-r{row}" for row in range(3)]


def _record(row_id: str) -> Record:
    tokens = {"prompt_tokens": 10, "output_tokens": 5}
    return Record(
        row_id, "svamp", "2 + 3?", "5", "5", "2 + 3 = 5.", meta={"teacher_tokens": tokens}
    )


def _failed(row_id: str) -> dict:
    return quarantine_row(row_id, TEACHER_ERROR, "gave up after 9 attempts", input="2 + 3?")


def _send(writer: ShardWriter, shard: int, ids: list[str], fail: set[str] = frozenset()):
    for row_id in ids:
        bad = _failed(row_id) if row_id in fail else None
        writer.add(shard, row_id, None if bad else _record(row_id), bad)


def _everything(out: str) -> tuple[list[str], list[dict]]:
    data = [r.id for r in iter_records(storage.join(out, "data"))]
    bad = []
    for file in storage.list_files(storage.join(out, "quarantine")):
        bad += [r.data for r in storage.iter_rows(file)]
    return data, bad


def test_a_rerun_sends_the_shards_without_counts_whole_and_reads_no_done_rows(tmp_path):
    out = str(tmp_path)
    plan = plan_resume(out, INPUTS, TASK)
    assert [(w.index, w.rows, w.only) for w in plan.work] == [
        (0, 3, None),
        (1, 3, None),
        (2, 3, None),
    ]
    writer = ShardWriter(out, TASK, plan.work, dict(enumerate(INPUTS.counts)))
    _send(writer, 0, _ids(0))
    assert storage.exists(counts_file(out, 0))  # written once its last row was back
    _send(writer, 1, _ids(1)[:2])  # the run fails here
    writer.close()
    assert storage.exists(data_file(out, 1)) and not storage.exists(counts_file(out, 1))

    again = plan_resume(out, INPUTS, TASK)
    assert [(w.index, w.only) for w in again.work] == [(1, None), (2, None)]
    assert (again.skipped, again.retried) == (3, 0)
    # The done shard's rows are not read: a plan over its counts alone gives the same.
    storage.delete(data_file(out, 0))
    assert plan_resume(out, INPUTS, TASK).skipped == 3


def test_teacher_errors_are_sent_again_and_replace_their_rows(tmp_path):
    out = str(tmp_path)
    plan = plan_resume(out, INPUTS, TASK)
    writer = ShardWriter(out, TASK, plan.work, dict(enumerate(INPUTS.counts)))
    writer.add(0, "s0-r0", None, quarantine_row("s0-r0", UNPARSEABLE, "no answer"))
    _send(writer, 0, _ids(0)[1:], fail={"s0-r2"})
    _send(writer, 1, _ids(1), fail=set(_ids(1)))
    _send(writer, 2, _ids(2))
    assert writer.add(2, "s2-r0", _record("s2-r0"), None) is False  # a repeat is dropped
    assert read_counts(out)[1].quarantined == {TEACHER_ERROR: 3}

    again = plan_resume(out, INPUTS, TASK)
    assert [(w.index, w.only) for w in again.work] == [(0, ("s0-r2",)), (1, tuple(_ids(1)))]
    assert (again.skipped, again.retried) == (9 - 4, 4)
    writer = ShardWriter(out, TASK, again.work, dict(enumerate(INPUTS.counts)))
    _send(writer, 0, ["s0-r2"])
    _send(writer, 1, _ids(1), fail={"s1-r1"})  # still failing: stays a teacher error

    data, bad = _everything(out)
    assert sorted(data + [q["id"] for q in bad]) == sorted(_ids(0) + _ids(1) + _ids(2))
    assert {q["id"]: q["reason"] for q in bad} == {"s0-r0": UNPARSEABLE, "s1-r1": TEACHER_ERROR}
    counts = read_counts(out)
    assert counts[0].written == 2 and counts[0].quarantined == {UNPARSEABLE: 1}
    assert counts[0].with_gold == 2 and counts[0].correct == 2 and counts[0].output_tokens == 10
    third = plan_resume(out, INPUTS, TASK)
    assert [(w.index, w.only) for w in third.work] == [(1, ("s1-r1",))]


def test_a_run_stopped_between_a_shards_files_is_finished_without_the_teacher(tmp_path):
    """The retried row reached data, but the counts (and the quarantine) still say it failed."""
    out = str(tmp_path)
    writer = ShardWriter(
        out, TASK, plan_resume(out, INPUTS, TASK).work, dict(enumerate(INPUTS.counts))
    )
    for shard in range(3):
        _send(writer, shard, _ids(shard), fail={"s0-r1"})
    records = [*iter_records(data_file(out, 0)), _record("s0-r1")]
    write_records(data_file(out, 0), records)  # the new data landed; nothing after it

    plan = plan_resume(out, INPUTS, TASK)
    assert plan.work == [] and plan.skipped == 9
    assert json.loads(storage.read_bytes(counts_file(out, 0)))["written"] == 3
    assert storage.exists(quarantine_file(out, 0))  # the stale row is dropped on its next write
