import os

import pytest

from dsbs import storage

ROWS = [
    {"id": "a", "input": "one, with a comma", "n": "1"},
    {"id": "b", "input": 'two "quoted"\nand a newline', "n": "2"},
]


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_local_round_trip(tmp_path, ext):
    path = str(tmp_path / "sub" / f"rows.{ext}")
    storage.write_rows(path, ROWS)
    assert storage.read_rows(path) == ROWS
    assert storage.exists(path)
    assert not [p for p in os.listdir(tmp_path / "sub") if p.endswith(".tmp")]


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(storage.StorageError, match="unknown format"):
        storage.write_rows(str(tmp_path / "rows.txt"), ROWS)


def test_crash_during_write_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    storage.write_rows(str(path), ROWS[:1])
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.write_rows(str(path), ROWS * 1000)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_iter_rows_reports_bad_jsonl_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n[1, 2]\n{"a": "caf\xe9"}\n{"a": 2}\n')
    rows = list(storage.iter_rows(str(path)))
    assert [(r.line, r.data) for r in rows if r.data] == [(1, {"a": 1}), (6, {"a": 2})]
    bad = {r.line: r.error for r in rows if r.data is None}
    assert bad[3].startswith("malformed JSON")
    assert bad[4].startswith("expected a JSON object")
    assert bad[5].startswith("not UTF-8")
    assert "\\xe9" in next(r.raw for r in rows if r.line == 5)
    with pytest.raises(storage.StorageError, match=r"rows.jsonl:3: malformed JSON"):
        storage.read_rows(str(path))


def test_csv_bad_lines(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("id,input\na,x\nb,y,extra\nc\n")
    rows = list(storage.iter_rows(str(path)))
    assert [r.data for r in rows if r.data] == [{"id": "a", "input": "x"}]
    assert [r.line for r in rows if r.data is None] == [3, 4]
    path.write_bytes(b"id,input\na,\xff\n")
    with pytest.raises(storage.StorageError, match=r"rows.csv:2: not UTF-8"):
        storage.read_rows(str(path))


def test_folder_reads_every_row_file_in_order(tmp_path):
    storage.write_rows(str(tmp_path / "d" / "part-1.parquet"), ROWS[1:])
    storage.write_rows(str(tmp_path / "d" / "part-0.parquet"), ROWS[:1])
    (tmp_path / "d" / "_SUCCESS").write_text("")
    assert storage.read_rows(str(tmp_path / "d")) == ROWS
    with pytest.raises(storage.StorageError, match="no .jsonl"):
        storage.read_rows(str(tmp_path / "empty"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(storage.StorageError, match="cannot read"):
        storage.read_bytes(str(tmp_path / "nope.jsonl"))


def test_join():
    assert storage.join("s3://b/runs/", "generate", "x.parquet") == "s3://b/runs/generate/x.parquet"
    assert storage.join("runs", "generate") == os.path.join("runs", "generate")


# --- s3:// against a real S3-compatible server on 127.0.0.1 --------------------------------


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_s3_round_trip(s3_bucket, ext):
    uri = f"{s3_bucket}/runs/x/rows.{ext}"
    assert not storage.exists(uri)
    storage.write_rows(uri, ROWS)
    assert storage.exists(uri)
    assert storage.read_rows(uri) == ROWS


def test_s3_prefix_listing_and_folder_read(s3_bucket):
    for i in range(3):
        storage.write_rows(f"{s3_bucket}/shards/part-{i}.jsonl", [ROWS[i % 2]])
    storage.write_bytes(f"{s3_bucket}/shards-other/x.jsonl", b'{"no": 1}\n')
    files = storage.list_files(f"{s3_bucket}/shards")
    assert files == [f"{s3_bucket}/shards/part-{i}.jsonl" for i in range(3)]
    assert storage.read_rows(f"{s3_bucket}/shards") == [ROWS[0], ROWS[1], ROWS[0]]
    assert storage.list_files(f"{s3_bucket}/shards/part-1.jsonl") == [
        f"{s3_bucket}/shards/part-1.jsonl"
    ]


def test_s3_missing_object_and_bucket(s3_bucket):
    with pytest.raises(storage.StorageError, match="cannot read"):
        storage.read_bytes(f"{s3_bucket}/nope.jsonl")
    with pytest.raises(storage.StorageError):
        storage.read_bytes("s3://no-such-bucket-dsbs/x.jsonl")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.read_bytes("s3:///x.jsonl")


def test_s3_large_write_is_complete(s3_bucket):
    # Large enough for boto3's multipart upload; the object appears whole or not at all.
    data = os.urandom(9 * 1024 * 1024)
    storage.write_bytes(f"{s3_bucket}/big.bin", data)
    assert storage.read_bytes(f"{s3_bucket}/big.bin") == data


def test_pyarrow_filesystem_talks_to_the_same_server(s3_bucket):
    storage.write_rows(f"{s3_bucket}/pa/rows.parquet", ROWS)
    fs, path = storage.pyarrow_filesystem(f"{s3_bucket}/pa/rows.parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(path, filesystem=fs).to_pylist() == ROWS


def test_absolute_leaves_s3_alone_and_anchors_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("s3://bucket/runs/demo") == "s3://bucket/runs/demo"
    assert storage.absolute("runs/demo") == str(tmp_path / "runs" / "demo")
    assert storage.absolute(str(tmp_path)) == str(tmp_path)


def test_local_writes_get_the_mode_a_plain_open_would(tmp_path):
    # mkstemp's 0600 would hide reports and exports from everyone but the writer.
    target = tmp_path / "report" / "index.html"
    storage.write_bytes(str(target), b"<html></html>")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_fingerprint_follows_replaced_and_appended_files_not_reruns(tmp_path):
    folder = tmp_path / "data"
    storage.write_rows(str(folder / "a.jsonl"), [{"id": "1", "input": "x"}])
    first = storage.fingerprint(str(folder))
    assert first and storage.fingerprint(str(folder)) == first  # nothing changed
    os.utime(folder / "a.jsonl", ns=(1, 1))  # replaced by a file of the same size
    assert storage.fingerprint(str(folder)) != first
    replaced = storage.fingerprint(str(folder))
    storage.write_rows(str(folder / "b.jsonl"), [{"id": "2", "input": "y"}])
    assert storage.fingerprint(str(folder)) != replaced
    assert storage.fingerprint(str(folder / "a.jsonl")) != storage.fingerprint(str(folder))
    assert storage.fingerprint(str(tmp_path / "missing")) is None
    assert storage.fingerprint("hf:gsm8k") is None


def test_s3_fingerprint_follows_the_objects_etags(s3_bucket):
    uri = f"{s3_bucket}/data/train.jsonl"
    storage.write_rows(uri, [{"id": "1", "input": "x"}])
    first = storage.fingerprint(uri)
    assert first and storage.fingerprint(uri) == first
    assert storage.fingerprint(f"{s3_bucket}/data") is not None
    storage.write_rows(uri, [{"id": "1", "input": "z"}])  # same size, new content
    assert storage.fingerprint(uri) != first
    assert storage.fingerprint(f"{s3_bucket}/nothing-here") is None


def test_a_replaced_training_file_is_not_already_trained(tmp_path):
    """The hash covered the path only: a replaced train.parquet was reported 'already trained'."""
    from dsbs.config import StudentConfig, TrainConfig
    from dsbs.train.trainer import config_hash

    data = tmp_path / "train.jsonl"
    storage.write_rows(str(data), [{"id": "1", "input": "x"}])
    train, student = TrainConfig(data=str(data)), StudentConfig()
    before = config_hash(train, student, "svamp", str(data))
    assert config_hash(train, student, "svamp", str(data)) == before
    storage.write_rows(str(data), [{"id": "1", "input": "x"}, {"id": "2", "input": "y"}])
    assert config_hash(train, student, "svamp", str(data)) != before


def test_s3_failures_of_listing_and_deleting_are_storage_errors(s3_server):
    """They surfaced as botocore's own exceptions, past every `except StorageError`."""
    missing = "s3://dsbs-no-such-bucket/prefix"
    for call in (storage.list_files, storage.list_objects, storage.delete):
        with pytest.raises(storage.StorageError, match=f"{missing}: cannot"):
            call(missing)
