import json
import shutil

import pytest

from dsbs.data.paper import import_paper
from dsbs.data.quarantine import BadInputError
from dsbs.records import read_records


@pytest.fixture
def paper_copy(assets, tmp_path):
    root = tmp_path / "datasets"
    shutil.copytree(assets / "paper", root)
    return root


def _quarantine(out):
    path = out.with_name(out.name.replace(".jsonl", ".quarantine.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_svamp_assets_import(paper_copy, tmp_path):
    out = tmp_path / "svamp.jsonl"
    summary = import_paper("svamp", str(paper_copy), "test", str(out))
    records = read_records(str(out))
    assert summary.rows == len(records) == 6
    assert len({r.id for r in records}) == 6 and summary.duplicates == 1
    assert [r.teacher_label for r in records] == [
        "( 12.0 + 7.0 )",
        "( 4.0 * 8.0 )",
        "( 30.0 + 12.0 )",
        "5.0",
        None,
        "( 12.0 + 7.0 )",
    ]
    # The outputs of test_CoT_1 line up with rows 5 and 6: the files are read in order.
    assert records[5].teacher_raw.startswith("12 + 7 = 19")
    assert "Q:" not in records[0].rationale
    assert summary.parsed == 5 and summary.teacher_accuracy == pytest.approx(4 / 6)
    assert summary.quarantined == 0 and _quarantine(out) == []
    assert "6 rows" in summary.line() and "83.3% parsed" in summary.line()


def test_anli_assets_import_with_source_ids(paper_copy, tmp_path):
    out = tmp_path / "anli.parquet"
    summary = import_paper("anli1", str(paper_copy), "test", str(out))
    records = read_records(str(out))
    assert [r.id for r in records] == ["a0", "a1", "a2", "a3"]
    assert [r.label for r in records] == ["entailment", "contradiction", "neutral", "contradiction"]
    assert summary.teacher_accuracy == 1.0


def test_output_files_in_numeric_order(tmp_path):
    root = tmp_path / "d"
    (root / "svamp" / "llm").mkdir(parents=True)
    rows = [{"input": f"Q{i}?", "label": f"( {i}.0 + 0.0 )"} for i in range(12)]
    (root / "svamp" / "svamp_train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i in range(12):  # one output per file: train_CoT_10 must follow train_CoT_9
        (root / "svamp" / "llm" / f"train_CoT_{i}.json").write_text(
            json.dumps([f"The answer is {i}."])
        )
    out = tmp_path / "o.jsonl"
    summary = import_paper("svamp", str(root), "train", str(out))
    assert summary.teacher_accuracy == 1.0


def _write_bad_dataset(root, data_lines, outputs):
    (root / "svamp" / "llm").mkdir(parents=True, exist_ok=True)
    (root / "svamp" / "svamp_test.json").write_bytes(b"\n".join(data_lines) + b"\n")
    (root / "svamp" / "llm" / "test_CoT_0.json").write_text(json.dumps(outputs))


GOOD = json.dumps({"input": "Tom has 2 and gets 3.\nHow many?", "label": "( 2.0 + 3.0 )"}).encode()


@pytest.mark.parametrize(
    ("bad_line", "kind", "detail"),
    [
        (b'{"input": "Tom has 2", "label":', "malformed JSON", "malformed JSON"),
        (json.dumps({"label": "( 1.0 + 1.0 )"}).encode(), "missing field", "input"),
        (b'{"input": "caf\xe9 has 2", "label": "( 1.0 + 1.0 )"}', "not UTF-8", "byte"),
        (json.dumps({"input": "   ", "label": "( 1.0 + 1.0 )"}).encode(), "empty field", "input"),
    ],
)
def test_each_bad_row_is_quarantined_with_file_line_reason(tmp_path, bad_line, kind, detail):
    root = tmp_path / "d"
    lines = [GOOD] * 99 + [bad_line] + [GOOD] * 100
    _write_bad_dataset(root, lines, ["The answer is (2 + 3)."] * 200)
    out = tmp_path / "o.jsonl"
    # 1 bad row in 200 is 0.5%, inside the default 1% budget: the import goes on.
    summary = import_paper("svamp", str(root), "test", str(out))
    assert summary.rows == 199 and summary.quarantined == 1
    [bad] = _quarantine(out)
    assert bad["reason"] == kind and detail in bad["detail"]
    assert bad["file"].endswith("svamp_test.json") and bad["line"] == 100
    # Alignment is kept: the bad row used up its own teacher output, not the next row's.
    assert summary.teacher_accuracy == 1.0


def test_more_rows_than_outputs(tmp_path):
    root = tmp_path / "d"
    _write_bad_dataset(root, [GOOD] * 300, ["The answer is (2 + 3)."] * 298)
    out = tmp_path / "o.jsonl"
    summary = import_paper("svamp", str(root), "test", str(out))
    bad = _quarantine(out)
    assert summary.rows == 298 and [b["line"] for b in bad] == [299, 300]
    assert {b["reason"] for b in bad} == {"no teacher output"}
    assert "300 rows but 298 teacher outputs" in bad[0]["detail"]


def test_more_outputs_than_rows(tmp_path):
    root = tmp_path / "d"
    _write_bad_dataset(root, [GOOD] * 200, ["The answer is (2 + 3)."] * 201)
    out = tmp_path / "o.jsonl"
    summary = import_paper("svamp", str(root), "test", str(out))
    [bad] = _quarantine(out)
    assert summary.rows == 200
    assert bad["reason"] == "teacher output without a row"
    assert bad["file"].endswith("test_CoT_0.json") and bad["line"] == 201


def test_non_text_teacher_output(tmp_path):
    root = tmp_path / "d"
    _write_bad_dataset(root, [GOOD] * 200, ["The answer is (2 + 3)."] * 150 + [None] + ["x"] * 49)
    out = tmp_path / "o.jsonl"
    summary = import_paper("svamp", str(root), "test", str(out))
    [bad] = _quarantine(out)
    assert (
        summary.quarantined == 1
        and bad["reason"] == "teacher output not text"
        and bad["line"] == 151
    )


def test_past_the_budget_fails_loudly_without_output(tmp_path):
    root = tmp_path / "d"
    lines = [GOOD] * 95 + [b"{oops"] * 5
    _write_bad_dataset(root, lines, ["The answer is (2 + 3)."] * 100)
    out = tmp_path / "o.jsonl"
    budget = (
        r"5 of 100 rows are bad \(5.0%: 5 malformed JSON\), "
        r"over the 1.0% budget \(--max-bad-fraction\)"
    )
    with pytest.raises(BadInputError, match=budget):
        import_paper("svamp", str(root), "test", str(out))
    assert not out.exists()
    assert len(_quarantine(out)) == 5
    # A looser budget, configured, lets it through.
    assert import_paper("svamp", str(root), "test", str(out), max_bad_fraction=0.05).rows == 95


def test_missing_teacher_outputs_and_unknown_names(tmp_path, paper_copy):
    with pytest.raises(OSError, match="no teacher outputs for svamp/train"):
        import_paper("svamp", str(paper_copy), "train", str(tmp_path / "o.jsonl"))
    with pytest.raises(ValueError, match="unknown dataset"):
        import_paper("gsm8k", str(paper_copy), "test", str(tmp_path / "o.jsonl"))
    (paper_copy / "svamp" / "llm" / "test_CoT_0.json").write_text("{not json")
    with pytest.raises(OSError, match="test_CoT_0.json: not a JSON list"):
        import_paper("svamp", str(paper_copy), "test", str(tmp_path / "o.jsonl"))


def test_import_to_and_from_s3(paper_copy, s3_bucket):
    from dsbs import storage

    for path in paper_copy.rglob("*.json"):
        storage.write_bytes(
            f"{s3_bucket}/datasets/{path.relative_to(paper_copy)}", path.read_bytes()
        )
    out = f"{s3_bucket}/records/svamp_test.parquet"
    summary = import_paper("svamp", f"{s3_bucket}/datasets", "test", out)
    assert summary.rows == 6 and len(read_records(out)) == 6


# --- the paper's own data (../shared), with the thresholds ------------------------


@pytest.mark.paper
@pytest.mark.parametrize(
    ("dataset", "split", "min_parsed", "min_accuracy"),
    [
        ("svamp", "test", 0.985, 0.740 - 0.005),
        ("cqa", "test", 0.985, 0.782 - 0.005),
        ("cqa", "train", 0.975, 0.753 - 0.005),
    ],
)
def test_paper_data_meets_reference(paper_root, tmp_path, dataset, split, min_parsed, min_accuracy):
    out = tmp_path / f"{dataset}_{split}.parquet"
    summary = import_paper(dataset, str(paper_root), split, str(out))
    records = read_records(str(out))
    assert len({r.id for r in records}) == len(records) == summary.rows
    assert summary.quarantined == 0
    assert summary.parsed / summary.rows >= min_parsed
    assert summary.teacher_accuracy >= min_accuracy
