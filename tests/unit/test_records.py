import pytest

from dsbs import storage
from dsbs.records import FIELDS, IdAssigner, Record, make_id, read_records, write_records


def _records():
    return [
        Record(
            "r1",
            "cqa",
            "Q?\nAnswer Choices:\n(a) x\n(b) y",
            "y",
            "y",
            "because",
            "raw",
            {"choices": ["x", "y"]},
        ),
        Record("r2", "svamp", "How many?", "( 1.0 + 2.0 )"),
    ]


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_records_round_trip_in_every_format(tmp_path, ext):
    path = str(tmp_path / f"records.{ext}")
    write_records(path, _records())
    assert read_records(path) == _records()
    assert list(storage.read_rows(path)[0]) == list(FIELDS)


def test_ids_are_stable_and_unique_with_duplicates_counted():
    first, second = IdAssigner(), IdAssigner()
    inputs = ["a", "b", "a", "a"]
    ids = [first("svamp", text) for text in inputs]
    assert ids == [second("svamp", text) for text in inputs]  # stable across runs
    assert len(set(ids)) == 4
    assert ids[0] == make_id("svamp", "a") and ids[2] == f"{ids[0]}~2"
    assert first.duplicates == 2


def test_source_ids_are_kept():
    assign = IdAssigner()
    assert assign("cqa", "x", "080ef69") == "080ef69"
    assert assign("cqa", "y", "080ef69") == "080ef69~2"
    assert assign("cqa", "z", 17) == "17"
    assert assign("cqa", "w", "") == make_id("cqa", "w")


def test_ids_differ_by_task():
    assert make_id("svamp", "x") != make_id("cqa", "x")


def test_from_row_refuses_unknown_and_missing_fields(tmp_path):
    with pytest.raises(ValueError, match="unknown record fields"):
        Record.from_row({"id": "a", "task": "t", "input": "x", "lable": "y"})
    with pytest.raises(ValueError, match="missing record fields"):
        Record.from_row({"id": "a", "task": "t", "input": ""})
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "task": "t", "input": "x"}\n{"id": "b", "task": "t"}\n')
    with pytest.raises(storage.StorageError, match=r"r.jsonl:2: missing record fields"):
        read_records(str(path))
