"""The student's pieces: presets, the export's round trip, an unfinished export refused, and
an export whose writes fail (a real file size limit) leaving the previous one whole."""

import dataclasses
import math
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from chaos_record import record

from dsbs.config import StudentConfig
from dsbs.storage import StorageError
from dsbs.student.decode import generate_texts
from dsbs.student.export import STUDENT_FILE, StudentInfo, load_student, save_student
from dsbs.student.model import build_student
from dsbs.student.presets import PRESETS, build_config
from dsbs.student.tokenizer import train_tokenizer
from dsbs.train.plan import count_params


def test_presets_have_the_published_t5_v1_1_shapes():
    xxl = build_config("t5-v1_1-xxl")
    assert (xxl.d_model, xxl.d_ff, xxl.num_heads, xxl.num_layers, xxl.vocab_size) == (
        4096,
        10240,
        64,
        24,
        32128,
    )
    # v1.1 does not rescale decoder outputs; transformers 5 marks that through this flag (and
    # then ties lm_head to the input embedding whatever the flag says).
    assert xxl.feed_forward_proj == "gated-gelu" and xxl.scale_decoder_outputs is False
    params, largest = count_params("t5-v1_1-xxl", 32128)
    assert 10.9e9 < params < 11.2e9 and largest == 32128 * 4096
    assert set(PRESETS) >= {
        "t5-tiny",
        "t5-v1_1-small",
        "t5-v1_1-base",
        "t5-v1_1-large",
        "t5-v1_1-xl",
    }


def test_a_student_from_scratch_starts_from_a_near_uniform_guess():
    # transformers draws T5 v1.1's output layer at std 1 and does not scale its input: the
    # demo's t5-mini started at a loss of about 60 (logits of std 11) where ln(vocab) is 6.
    torch.manual_seed(0)
    vocab = 500
    model = build_student(StudentConfig(preset="t5-mini"), vocab)
    inputs = torch.randint(2, vocab, (8, 24))
    loss = model(input_ids=inputs, labels=torch.randint(2, vocab, (8, 12))).loss.item()
    assert loss < 1.5 * math.log(vocab), loss


@pytest.fixture
def tiny(tmp_path):
    """(model, tokenizer, info): an untrained t5-tiny with its tokenizer, ready to export."""
    from transformers import T5ForConditionalGeneration

    tokenizer = train_tokenizer(
        [f"predict: {i} plus {i}" for i in range(100)], 80, tmp_path / "tok"
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(build_config("t5-tiny", len(tokenizer))).eval()
    info = StudentInfo(
        task="svamp",
        mode="distill_step_by_step",
        preset="t5-tiny",
        max_input_length=32,
        max_target_length=8,
        steps=3,
        version="abc",
    )
    return model, tokenizer, info


def test_export_round_trip_predicts_the_same(tiny, tmp_path):
    model, tokenizer, info = tiny
    save_student(model, tokenizer, info, str(tmp_path / "student"))
    loaded, loaded_tokenizer, loaded_info = load_student(str(tmp_path / "student"))
    assert loaded_info == info
    inputs = ["predict: 3 plus 3", "predict: 12 plus 12"]
    assert generate_texts(loaded, loaded_tokenizer, inputs, 32, 8) == generate_texts(
        model, tokenizer, inputs, 32, 8
    )


def test_an_export_without_the_dsbs_file_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=STUDENT_FILE):
        load_student(str(tmp_path))


def test_export_in_size_capped_shards_and_the_training_dtype(tiny, tmp_path):
    """The export was one fp32 state dict held whole by rank 0 (44 GB for xxl)."""
    import json
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from dsbs.student.export import gathered_shards

    model, tokenizer, info = tiny
    cap = 200_000
    shards = list(gathered_shards(model, torch.float32, cap, receive=True))
    assert len(shards) > 2
    assert all(sum(t.numel() * 4 for t in s.values()) <= cap or len(s) == 1 for s in shards)
    names = [k for s in shards for k in s]
    assert len(names) == len(set(names)) and "shared.weight" in names
    assert "lm_head.weight" not in names or "shared.weight" not in names  # tied: written once
    assert list(gathered_shards(model, torch.float32, cap, receive=False)) == []

    out = tmp_path / "student"
    save_student(model, tokenizer, info, str(out), shards=shards, dtype=torch.float32)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    }
    loaded, loaded_tokenizer, _ = load_student(str(out))
    inputs = ["predict: 3 plus 3", "predict: 12 plus 12"]
    assert generate_texts(loaded, loaded_tokenizer, inputs, 32, 8) == generate_texts(
        model, tokenizer, inputs, 32, 8
    )

    half = tmp_path / "bf16"
    save_student(
        model,
        tokenizer,
        info,
        str(half),
        shards=gathered_shards(model, torch.bfloat16, 10**9, receive=True),
        dtype=torch.bfloat16,
    )
    assert (half / "model.safetensors").stat().st_size < 0.6 * sum(
        (out / f).stat().st_size for f in set(index["weight_map"].values())
    )
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    as_fp32, _, _ = load_student(str(half), dtype=torch.float32)
    assert next(as_fp32.parameters()).dtype == torch.float32


@contextmanager
def _file_size_limit(max_bytes: int) -> Iterator[None]:
    """Writes past `max_bytes` fail with EFBIG in this process, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.chaos
def test_an_export_whose_writes_fail_leaves_the_previous_export_whole(tiny, tmp_path):
    """The export was copied file by file over the old one (a failed copy left old and new files
    under the old dsbs file), and a failed write was a bare SafetensorError traceback."""
    model, tokenizer, info = tiny
    out = tmp_path / "exports" / "student"
    save_student(model, tokenizer, info, str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    newer = dataclasses.replace(info, steps=6, version="v2")
    with _file_size_limit(64 * 1024), pytest.raises(StorageError) as failure:
        save_student(model, tokenizer, newer, str(out))
    assert "File too large" in str(failure.value)
    assert "previous export there is untouched" in str(failure.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_student(str(out))[2] == info
    assert [p.name for p in out.parent.iterdir()] == ["student"]  # no staging folder left
    save_student(model, tokenizer, newer, str(out))  # space again: the export goes through
    assert load_student(str(out))[2] == newer
    record(
        "training: writes failing during the export",
        "a file size limit (EFBIG, as a full disk) while a new export replaces the old",
        sent=2,
        answered=1,
        errors=0,
        lost=0,
        detail="the failed export ended in a StorageError naming the file; the previous "
        "export stayed byte for byte and loadable, no staging folder left; the retry exported",
    )


def test_an_export_re_published_to_s3_drops_the_previous_files(tiny, s3_bucket, tmp_path):
    """Shards of the previous export stayed under the prefix beside the new model's."""
    from dsbs import storage
    from dsbs.student.export import gathered_shards

    model, tokenizer, info = tiny
    prefix = f"{s3_bucket}/students/republished"
    parts = gathered_shards(model, torch.float32, 2**18, receive=True)
    save_student(model, tokenizer, info, prefix, shards=parts, dtype=torch.float32)
    assert any("-of-" in f for f in storage.list_files(prefix))
    newer = dataclasses.replace(info, version="v2")
    save_student(model, tokenizer, newer, prefix)
    names = {f.rsplit("/", 1)[-1] for f in storage.list_files(prefix)}
    assert "model.safetensors" in names and not any(n.startswith("model-0") for n in names)
    assert load_student(prefix, cache_dir=str(tmp_path / "cache"))[2] == newer


def test_the_next_export_removes_what_a_killed_export_left(tiny, tmp_path):
    """A SIGKILLed export left its hidden staging folder beside the export for good. Its
    leftovers are made here by hand as the killed process would have left them (a folder with
    part of a shard); one untouched for two hours goes, a fresh one (a live export) stays."""
    import os
    import time

    model, tokenizer, info = tiny
    beside = tmp_path / "exports"
    beside.mkdir()
    out = beside / "student"
    stale = beside / ".student.staging-0123456789ab"
    live = beside / ".student.staging-ba9876543210"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "part-00000.safetensors").write_bytes(b"\0" * 1024)
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    save_student(model, tokenizer, info, str(out))
    assert sorted(p.name for p in beside.iterdir()) == [live.name, "student"]
    assert load_student(str(out))[2] == info


def test_a_failed_s3_export_names_the_failing_object_once(tiny, s3_server):
    """A missing bucket ended the export in botocore's own NoSuchBucket (storage.delete let it
    through), and an S3 StorageError was wrapped in a second naming the prefix again."""
    model, tokenizer, info = tiny
    prefix = "s3://dsbs-no-such-bucket/students/s"
    with pytest.raises(StorageError) as failure:
        save_student(model, tokenizer, info, prefix)
    message = str(failure.value)
    assert message.count(prefix) == 1 and "the prefix is refused" in message
