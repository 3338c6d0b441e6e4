"""Training data on storage: examples per mode, hash splits written once as parquet shards,
each rank's share of them, the tokenizer's bounded sample, and a rank's checkpoint files."""

from collections import Counter
from pathlib import Path

from dsbs import storage
from dsbs.config import TrainConfig
from dsbs.records import Record, write_records
from dsbs.train import data
from dsbs.train.checkpoints import rank_files
from dsbs.train.data import ParquetShards, read_examples, tokenizer_texts, write_splits
from dsbs.train.examples import to_example

RECORDS = [
    Record(
        id="a",
        task="svamp",
        input="2 plus 3?",
        label="( 2 + 3 )",
        teacher_label="( 2 + 3 )",
        rationale="2 + 3 = 5.",
    ),
    Record(
        id="b",
        task="svamp",
        input="4 times 2?",
        label="( 4 * 2 )",
        teacher_label=None,
        rationale=None,
    ),
    Record(
        id="c",
        task="svamp",
        input="9 minus 1?",
        label=None,
        teacher_label="( 9 - 1 )",
        rationale="9 - 1 = 8.",
    ),
    Record(
        id="d",
        task="svamp",
        input="6 over 3?",
        label="( 6 / 3 )",
        teacher_label="( 6 / 2 )",
        rationale="",
    ),
    Record(
        id="e",
        task="svamp",
        input="   ",
        label="( 1 + 1 )",
        teacher_label="( 1 + 1 )",
        rationale="x",
    ),
]


def _select(mode: str, label_source: str):
    examples, skipped = [], Counter()
    for record in RECORDS:
        example = to_example(record, mode, label_source)
        if isinstance(example, str):
            skipped[example] += 1
        else:
            examples.append(example)
    return examples, skipped


def test_each_mode_learns_its_label_and_counts_what_it_skips():
    examples, skipped = _select("standard_finetune", "gold")
    assert [e.id for e in examples] == ["a", "b", "d"] and all(e.rationale == "" for e in examples)
    assert skipped == {"no_label": 1, "empty_input": 1}

    examples, skipped = _select("standard_distill", "teacher")
    assert [(e.id, e.target_label) for e in examples] == [
        ("a", "( 2 + 3 )"),
        ("c", "( 9 - 1 )"),
        ("d", "( 6 / 2 )"),
    ]
    assert skipped == {"no_teacher_label": 1, "empty_input": 1}

    examples, skipped = _select("distill_step_by_step", "teacher")
    assert [e.id for e in examples] == ["a", "c"]
    assert examples[1].gold == "" and examples[0].rationale == "2 + 3 = 5."
    assert skipped == {"no_teacher_label": 1, "no_rationale": 1, "empty_input": 1}

    examples, _ = _select("distill_step_by_step", "gold")
    assert [(e.id, e.target_label) for e in examples] == [("a", "( 2 + 3 )")]


def _records(n: int, start: int = 0) -> list[Record]:
    return [
        Record(
            id=f"r{i}",
            task="svamp",
            input=f"q{i}",
            label="1",
            teacher_label="1",
            rationale=f"because {i}",
        )
        for i in range(start, start + n)
    ]


def _ids(manifest, split: str) -> list[str]:
    return [e.id for e in read_examples(manifest.files[split])]


def test_splits_are_written_once_in_capped_shards_stable_and_nested(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHARD_ROWS", 300)
    source = str(tmp_path / "in.jsonl")
    write_records(source, _records(2000))
    train = TrainConfig(valid_fraction=0.1, test_fraction=0.1)
    manifest = write_splits(train, source, str(tmp_path / "a"))
    assert sum(manifest.rows.values()) == 2000 and manifest.skipped == {}
    assert 150 < manifest.rows["valid"] < 250 and 150 < manifest.rows["test"] < 250
    assert len(manifest.files["train"]) == -(-manifest.rows["train"] // 300)
    ids = [i for split in ("train", "valid", "test") for i in _ids(manifest, split)]
    assert len(ids) == len(set(ids)) == 2000
    # The same rows in another order fall in the same splits.
    reversed_source = str(tmp_path / "reversed.parquet")
    write_records(reversed_source, list(reversed(_records(2000))))
    again = write_splits(train, reversed_source, str(tmp_path / "b"))
    assert set(_ids(again, "valid")) == set(_ids(manifest, "valid"))
    # Subsamples of a data-size sweep nest.
    quarter = write_splits(
        train.model_copy(update={"subsample": 0.25}), source, str(tmp_path / "q")
    )
    half = write_splits(train.model_copy(update={"subsample": 0.5}), source, str(tmp_path / "h"))
    assert set(_ids(quarter, "train")) < set(_ids(half, "train"))
    assert 0.2 < quarter.rows["train"] / manifest.rows["train"] < 0.3
    # A rerun reads the manifest: nothing is split again.
    monkeypatch.setattr(data, "iter_records", None)
    assert write_splits(train, source, str(tmp_path / "a")) == manifest


def test_an_explicit_test_set_replaces_the_held_out_rows(tmp_path):
    source, test = str(tmp_path / "in.jsonl"), str(tmp_path / "test.jsonl")
    write_records(source, RECORDS + _records(100))
    write_records(test, _records(5, start=1000) + RECORDS)
    train = TrainConfig(test_data=test, valid_fraction=0.1)
    manifest = write_splits(train, source, str(tmp_path / "out"))
    assert manifest.skipped == {"no_teacher_label": 1, "no_rationale": 1, "empty_input": 1}
    # Scored on gold: every row with a gold label counts, with or without a rationale.
    assert _ids(manifest, "test") == ["r1000", "r1001", "r1002", "r1003", "r1004", "a", "b", "d"]
    assert manifest.rows["train"] + manifest.rows["valid"] == 102


def test_splits_on_s3(tmp_path, s3_bucket):
    source = str(tmp_path / "in.jsonl")
    write_records(source, _records(50))
    manifest = write_splits(TrainConfig(), source, f"{s3_bucket}/run/data")
    assert storage.exists(f"{s3_bucket}/run/data/manifest.json")
    assert sorted(i for s in ("train", "valid", "test") for i in _ids(manifest, s)) == sorted(
        f"r{i}" for i in range(50)
    )


def test_ranks_stream_equal_disjoint_shares_shuffled_each_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHARD_ROWS", 40)
    source = str(tmp_path / "in.jsonl")
    write_records(source, _records(203))
    train = TrainConfig(
        valid_fraction=0.0,
        test_fraction=0.0,
        micro_batch_size=4,
        length_grouping=2,
        shuffle_buffer_rows=50,
        max_steps=1,
    )
    manifest = write_splits(train, source, str(tmp_path / "out"))
    shares = []
    for rank in range(2):
        batches = list(ParquetShards(manifest, train, rank, 2).epoch(seed=7))
        assert all(len(b["id"]) == 8 for b in batches[:-1])
        shares.append([i for b in batches for i in b["id"]])
    assert len(shares[0]) == len(shares[1]) == 101  # the 203rd row sits this pass out
    assert not set(shares[0]) & set(shares[1])
    # Another pass reads the shards in another order: other rows and another order per rank.
    again = [i for b in ParquetShards(manifest, train, 0, 2).epoch(seed=8) for i in b["id"]]
    assert len(again) == 101 and again != shares[0]
    assert ParquetShards(manifest, train, 1, 2).examples("train")[0].id == "r0"


def test_the_tokenizer_sees_an_even_bounded_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHARD_ROWS", 100)
    source = str(tmp_path / "in.jsonl")
    write_records(source, _records(1000))
    train = TrainConfig(valid_fraction=0.0, test_fraction=0.0)
    manifest = write_splits(train, source, str(tmp_path / "out"))
    texts = tokenizer_texts(manifest, 100)
    rationales = [t for t in texts if t.startswith("because")]
    assert len(rationales) == 100  # every 10th row, from every shard
    assert "because 0" in rationales and "because 990" in rationales


def test_a_rank_reads_only_its_own_checkpoint_shards():
    names = [
        "ckpt/latest",
        "ckpt/dsbs_state.json",
        "ckpt/step4/mp_rank_00_model_states.pt",
        "ckpt/step4/zero_pp_rank_0_mp_rank_00_model_states.pt",
        "ckpt/step4/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "ckpt/step4/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "ckpt/step4/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "ckpt/step4/zero_pp_rank_11_mp_rank_00_optim_states.pt",
    ]
    assert rank_files(names, 1) == [
        "ckpt/latest",
        "ckpt/dsbs_state.json",
        "ckpt/step4/mp_rank_00_model_states.pt",
        "ckpt/step4/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "ckpt/step4/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


def test_a_resuming_rank_downloads_only_its_files_from_s3(s3_bucket):
    """Ray's checkpoint.as_directory() fetched every rank's shards to every rank."""
    import os

    from dsbs.train.checkpoints import rank_checkpoint

    prefix = f"{s3_bucket}/ckpt"
    names = ["latest", "dsbs_state.json", "step4/zero_pp_rank_0_mp_rank_00_model_states.pt"]
    names += ["step4/zero_pp_rank_1_mp_rank_00_model_states.pt", "tokenizer/spiece.model"]
    for name in names:
        storage.write_bytes(f"{prefix}/{name}", name.encode())
    filesystem, path = storage.pyarrow_filesystem(prefix)
    with rank_checkpoint(filesystem, path, 1) as folder:
        got = sorted(
            os.path.relpath(os.path.join(d, f), folder)
            for d, _, files in os.walk(folder)
            for f in files
        )
        mine = "step4/zero_pp_rank_1_mp_rank_00_model_states.pt"
        assert Path(folder, mine).read_text() == mine
    assert got == [
        "dsbs_state.json",
        "latest",
        "step4/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "tokenizer/spiece.model",
    ]
    assert not os.path.exists(folder)  # downloaded to a temporary folder, removed after


def test_the_teacher_is_scored_on_the_same_rows_as_the_student():
    from dsbs.train.evaluate import teacher_accuracy
    from dsbs.train.examples import Example

    def row(i: int, teacher: str, gold: str = "( 2 + 3 )") -> Example:
        return Example(str(i), "2 plus 3?", gold, "", gold, teacher)

    rows = [row(0, "( 3 + 2 )"), row(1, "( 2 * 3 )"), row(2, ""), row(3, "5")]
    assert teacher_accuracy(rows, "svamp") == 0.5  # equal values count; no answer is wrong
    assert teacher_accuracy([row(0, "")], "svamp") is None  # no teacher labels at all
    assert teacher_accuracy([row(0, "5", gold="")], "svamp") is None  # nothing to score
    assert to_example(RECORDS[0], "distill_step_by_step", "gold").teacher == "( 2 + 3 )"
