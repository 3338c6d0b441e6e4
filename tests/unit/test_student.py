"""The student's pieces: presets, the export's round trip, and an unfinished export refused."""

import pytest
import torch

from dsbs.student.decode import generate_texts
from dsbs.student.export import STUDENT_FILE, StudentInfo, load_student, save_student
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


def test_export_round_trip_predicts_the_same(tmp_path):
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
